"""Web crawl -> GPT-2 pretraining data on Spark, and a GPT-2 trainer/sampler for the result."""

__version__ = "0.1.0"
