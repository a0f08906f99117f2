"""Built-in word lists for the synthetic corpus (no downloads). Plain lists, so iteration order is fixed.

The lists are large enough that two unrelated generated documents share almost no word 5-grams: the
ground-truth near-duplicates must come from the generator's edits, not from a tiny vocabulary.
"""
from __future__ import annotations

NOUNS = """
account address advice afternoon agreement airport animal answer apartment apple area argument army
article artist audience author autumn baby balance ball band bank basket battery beach bed bell bicycle
bird birthday blanket board boat body bone book border bottle box bread bridge brother budget building
bus business button cabin cake camera camp candle capital captain car card career carpet castle cat
ceiling center chair champion chance chapter character chart cheese chicken child choice church circle
city class climate clock cloud club coach coast coat coffee collection college color committee community
company computer concert condition contract conversation corner cottage council country county couple
course court cousin crowd culture cup customer dance daughter deal decade decision degree desert design
desk detail device diagram dinner direction director discussion disease distance doctor document dog
door dream dress driver drum engine evening event evidence example exercise experience experiment expert
factory family farm farmer father feature festival field film finger fire fish flag flight floor flower
forest friend fruit future game garden gate gift glass government grandmother group guest guide guitar
habit hall hammer harbor hat health heart helmet highway hill history holiday home hospital hotel house
idea island jacket journal journey judge kitchen knife lake lamp language lawyer leader lesson letter
library light list machine magazine manager map market meeting member memory message method minister
mirror model moment month morning mountain museum music neighbor network newspaper night notebook ocean
office opinion orange owner package page painting paper parent park partner passenger pattern payment
pencil people performance period person phone photograph piano picture pilot planet plant plate player
pocket poem poet police policy pond population portrait position pot prize problem process product
professor program project property question radio rain recipe record region report restaurant result
river road rock roof room rule salary sample school science screen season secret seed server shadow ship
shirt shop shoulder signal singer sister situation skill sky society soldier song source speech sport
spring square stadium stage station statue storm story street student studio subject summer sun supply
surface system table teacher team technology telescope temperature tent theory ticket tool tower town
track tradition train tree trip truck tunnel uncle university valley vehicle village visitor voice wall
watch water weather website week window winter witness woman worker workshop writer yard year
""".split()

# Topic nouns give each synthetic site its own flavour (and its own rare 5-grams).
TOPICS = {
    "cooking": "oven sauce flour butter garlic onion pepper skillet dough broth spice noodle pastry "
               "vinegar salad soup kettle ladle marinade casserole dumpling pancake omelette lentil "
               "cinnamon basil risotto tortilla yogurt".split(),
    "travel": "passport luggage itinerary hostel ferry border visa backpack compass souvenir suitcase "
              "terminal cruise guidebook lighthouse canyon glacier volcano monastery vineyard lagoon "
              "railway harbour postcard campsite waterfall".split(),
    "technology": "processor keyboard database compiler router firmware kernel browser algorithm "
                  "laptop sensor cable monitor satellite battery circuit protocol interface terminal "
                  "printer drone robot smartphone headset chip".split(),
    "gardening": "tomato shovel compost hedge tulip fertilizer greenhouse orchard soil sprout rake "
                 "lettuce pumpkin sunflower beetle trellis mulch rosebush seedling cucumber meadow "
                 "hose wheelbarrow acorn blossom".split(),
    "finance": "mortgage dividend portfolio invoice pension stock bond loan tax savings inflation "
               "interest credit debt fund broker ledger auditor currency receipt wallet merger "
               "shareholder deposit insurance".split(),
    "sports": "goalkeeper referee marathon tournament racket stadium trophy coach sprint medal "
              "league helmet jersey whistle playoff striker tackle rowing cyclist wrestler "
              "scoreboard dugout skate paddle hurdle".split(),
    "science": "molecule telescope fossil electron galaxy microscope enzyme neuron crystal comet "
               "asteroid laboratory isotope protein magnet laser genome bacteria orbit nebula "
               "particle vaccine specimen reactor spectrum".split(),
    "history": "emperor parliament manuscript treaty fortress dynasty rebellion colony cathedral "
               "pilgrim monarch harbor chronicle archive artifact knight scribe senate empire "
               "revolution tapestry ruin coin palace throne".split(),
    "music": "violin orchestra melody chorus drummer album rehearsal conductor saxophone lyric "
             "harmony trumpet ballad quartet soprano tempo encore microphone vinyl cello banjo "
             "accordion symphony anthem playlist".split(),
    "pets": "puppy kitten leash collar aquarium hamster parrot veterinarian kennel terrier tortoise "
            "rabbit ferret goldfish paw whisker saddle pony cage treat grooming litter bowl "
            "feather lizard".split(),
}

ADJECTIVES = """
able ancient angry anxious bold brave bright brief broad busy calm careful cheap clean clever close
cold comfortable common complex cool curious dark deep different difficult distant dry dusty eager
early easy elegant empty enormous entire equal exciting expensive famous fancy fast favorite fierce
final fine firm flat fresh friendly full funny gentle giant glad golden good grand great green happy
hard heavy helpful hidden high honest hot huge humble important independent informal innocent
interesting kind large late lazy little local lonely long loud lovely low lucky main major mild
minor modern narrow natural nearby neat nervous new noisy normal obvious odd official old open
ordinary original pale patient peaceful perfect plain pleasant polite poor popular powerful precise
pretty private proud public quick quiet rapid rare raw ready real recent regular remote rich rough
round royal rural safe salty scarce secret serious sharp short shy silent silver simple slow small
smart smooth soft solid special spicy steady steep strange strict strong sudden sunny sweet tall
tender thick thin tiny tired tough traditional typical ugly unusual urban useful vast warm weak
wealthy wet wide wild wise wooden young
""".split()

# (present base, third person, past)
VERBS = [tuple(v.split("/")) for v in """
accept/accepts/accepted admire/admires/admired announce/announces/announced arrange/arranges/arranged
borrow/borrows/borrowed build/builds/built carry/carries/carried change/changes/changed
check/checks/checked choose/chooses/chose clean/cleans/cleaned collect/collects/collected
compare/compares/compared consider/considers/considered cover/covers/covered create/creates/created
deliver/delivers/delivered describe/describes/described design/designs/designed destroy/destroys/destroyed
discover/discovers/discovered discuss/discusses/discussed draw/draws/drew enjoy/enjoys/enjoyed
examine/examines/examined explain/explains/explained explore/explores/explored find/finds/found
fix/fixes/fixed follow/follows/followed forget/forgets/forgot gather/gathers/gathered
grow/grows/grew help/helps/helped hide/hides/hid improve/improves/improved include/includes/included
inspect/inspects/inspected invent/invents/invented join/joins/joined keep/keeps/kept know/knows/knew
lead/leads/led learn/learns/learned leave/leaves/left lift/lifts/lifted load/loads/loaded
lose/loses/lost make/makes/made measure/measures/measured mention/mentions/mentioned move/moves/moved
notice/notices/noticed open/opens/opened order/orders/ordered paint/paints/painted pass/passes/passed
plan/plans/planned prepare/prepares/prepared present/presents/presented protect/protects/protected
publish/publishes/published pull/pulls/pulled push/pushes/pushed reach/reaches/reached read/reads/read
receive/receives/received recommend/recommends/recommended remember/remembers/remembered
repair/repairs/repaired replace/replaces/replaced review/reviews/reviewed save/saves/saved
see/sees/saw sell/sells/sold send/sends/sent share/shares/shared show/shows/showed sort/sorts/sorted
study/studies/studied support/supports/supported take/takes/took teach/teaches/taught test/tests/tested
throw/throws/threw touch/touches/touched trace/traces/traced train/trains/trained
translate/translates/translated update/updates/updated use/uses/used visit/visits/visited
wash/washes/washed watch/watches/watched welcome/welcomes/welcomed win/wins/won write/writes/wrote
""".split()]

ADVERBS = """
again almost always barely briefly carefully certainly clearly closely completely constantly
deliberately early easily eventually finally firmly frankly freely gently gladly gradually happily
hardly honestly immediately largely lately loudly mostly naturally nearly neatly normally often
openly patiently perhaps politely probably quickly quietly rarely readily really recently regularly
roughly seldom seriously sharply simply slowly smoothly softly sometimes soon steadily strongly
suddenly surely swiftly truly usually warmly widely wisely yesterday
""".split()

PREPOSITIONS = """about above across after against along among around at before behind below beneath
beside between beyond by during for from inside into near of off on onto outside over past through
toward under until upon with within without""".split()

FIRST_NAMES = """Ada Alice Amir Ana Anton Beatriz Bruno Carla Chen Chloe Daniel Dara Elena Emil Fatima
Felix Grace Hana Hugo Ines Ivan James Jana Jonas José Karim Kofi Lars Laura Leila Liam Lucia Maya Mei
Milan Nadia Nina Noah Olga Omar Pablo Priya Rafael Rosa Sara Sofia Tariq Tomas Vera Wei Yara Yusuf
Zoë""".split()

LAST_NAMES = """Abbott Alvarez Andersen Baker Barros Becker Brooks Castillo Chen Costa Dubois Duarte
Eriksen Fischer Garcia Hale Haddad Ito Jensen Kowalski Larsen Lee Lopez Mensah Moreau Müller Nakamura
Novak Okafor Olsen Park Patel Quinn Reyes Rossi Santos Schmidt Silva Sokolov Tanaka Torres Varga
Weber Wright Yilmaz Zhang""".split()

PLACES = """Aberdeen Almaty Antwerp Bergen Bilbao Bologna Bristol Busan Cork Dakar Delft Dresden Durban
Galway Ghent Graz Haarlem Hobart Kyoto Leeds Leipzig Lima Lisbon Lyon Malmo Mombasa Nantes Oaxaca
Oslo Porto Quebec Riga Salta Seville Split Tartu Toledo Turku Utrecht Valencia Vilnius Zagreb
Zurich""".split()

SITE_WORDS = """acorn amber anchor arrow aspen atlas beacon birch bluebird canyon cedar clover comet
copper coral crescent daisy delta ember falcon fern fjord granite harbor hazel heron horizon ivy
juniper kestrel lantern maple meadow mesa orbit otter pebble pine prairie quartz raven ridge river
saffron sage sparrow spruce summit thistle tide timber tundra violet willow""".split()

TLDS = ["com", "org", "net", "io", "co.uk", "de", "info", "blog"]

COMMENT_OPENERS = ["Great post", "Thanks for sharing", "I disagree", "Interesting read",
                   "This helped a lot", "Not sure about this", "Well written", "Bookmarked",
                   "Finally someone said it", "Good points overall"]
