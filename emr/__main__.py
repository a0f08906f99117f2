import sys

from emr.launch import main

sys.exit(main())
