"""Every column and file name that crosses a stage boundary, in one place."""

# users.parquet: one row per user, items in chronological order (leave-one-out: [..., valid, test])
USER_ID = "user_id"  # int64, unique; 0..U-1 in a fresh run directory, carried across snapshots (slim.data.identity)
RAW_USER_ID = "raw_user_id"  # str, id in the source data
ITEM_IDS = "item_ids"  # list<int32>, item indices 1..N (0 is padding)
TIMESTAMPS = "timestamps"  # list<int64>, seconds (or source order when the source has no time)
HISTORY_LEN = "history_len"  # int32, len(item_ids)
VALID_ITEM = "valid_item"  # int32, item_ids[-2]
TEST_ITEM = "test_item"  # int32, item_ids[-1]

# items.parquet: one row per item
ITEM_ID = "item_id"  # int32 1..N
RAW_ITEM_ID = "raw_item_id"  # str
TITLE = "title"
CATEGORY = "category"
BRAND = "brand"
TEXT = "text"  # title/category/brand assembled for the encoder and prompts
POPULARITY = "popularity"  # int64, interactions in training prefixes
PRESENT = "present"  # bool: in this snapshot (false: an item of an earlier snapshot, kept so its id stays its own)

# candidates.parquet: target + 100 sampled negatives per (user, split, protocol)
SPLIT = "split"  # "valid" | "test"
PROTOCOL = "protocol"  # "uni100" | "pop100"
TARGET = "target"  # int32
NEGATIVES = "negatives"  # list<int32>[100]

# rationales (teacher/rationales/ and student/)
PROMPT = "prompt"
RATIONALE = "rationale"
STEP1, STEP2, STEP3 = "step1", "step2", "step3"
MODEL = "model"
TOKENS_IN, TOKENS_OUT = "tokens_in", "tokens_out"
COST_USD = "cost_usd"
STATUS = "status"  # "ok" | "malformed" | "failed"
ERROR = "error"
ATTEMPTS = "attempts"
ROW_ID = "row_id"  # str, unique per row written (the same row folded twice is one row)
WRITTEN_AT = "written_at"  # int64 ns: when the row was written; the latest row of a user wins (slim.io.shards)
PROMPT_HASH = "prompt_hash"  # str, student: hash of the exact prompt text sent (slim.student.keys)
# str, student: hash of what decides the row (generation settings + prompt_hash); kept while it holds
ROW_KEY = "row_key"
BILLED = "billed_requests"  # int32, teacher: responses the provider billed for this row, usable or not
UNPRICED = "unpriced_requests"  # int32, teacher: billed responses whose usage could not be read (priced at 0)
WASTED_USD = "wasted_cost_usd"  # float64, teacher: part of cost_usd spent on responses the row does not keep

# files in the run directory: one folder per stage, named after the stage; STAGE_DIRS, in pipeline order, is the one
# list of the stages' names (slim/runner/stages.py derives its order and modules from it, adding the on-demand serve;
# the train and evaluate stages also write models/ and reports/, their products)
DATA_DIR = "data"
TEACHER_DIR = "teacher"
DISTILL_DIR = "distill"
STUDENT_DIR = "student"
ENCODE_DIR = "encode"
TRAIN_DIR = "train"
SEARCH_DIR = "train/search"  # train.search: <group>.json (the choice) and <group>/<trial key>.json (each trial)
EVALUATE_DIR = "evaluate"
STAGE_DIRS = (DATA_DIR, TEACHER_DIR, DISTILL_DIR, STUDENT_DIR, ENCODE_DIR, TRAIN_DIR, EVALUATE_DIR)
MODELS_DIR = "models"  # train's product: one folder per trained run, models/<run>/ (slim.recsys.checkpoint)
METRICS_FILE = "metrics.json"  # a trained run's metrics, models/<run>/metrics.json: written last (marks it done)
USERS_FILE = "data/users.parquet"
ITEMS_FILE = "data/items.parquet"
USER_IDS_FILE = "data/user_ids.parquet"  # raw_user_id -> user_id of every user the run directory ever had
CANDIDATES_DIR = "data/candidates"
MANIFEST = "manifest.json"

SPLITS = ("valid", "test")
PROTOCOLS = ("uni100", "pop100")  # the sampled ones, stored in candidates/
EVAL_PROTOCOLS = ("uni100", "pop100", "full", "full_keep")  # sampled; full ranking with history excluded, kept
NUM_NEGATIVES = 100

# encode/ (encode stage): float16, L2-normalised
ITEM_EMB_FILE = "encode/items.npy"  # [N+1, D] float16, row i = item_id i, row 0 (padding) zeros
USER_EMB_FILE = "encode/users_{field}.parquet"  # user_id, embedding (list<float16>[D]); field below
TEACHER_USER_EMB_FILE = "encode/teacher_users_{field}.parquet"  # the same for the teacher's rationales
# the no-LLM control: the encoded item text of the prefix a rationale prompt shows (field: rationale only)
HISTORY_USER_EMB_FILE = "encode/history_users_{field}.parquet"
USER_EMB_FIELDS = ("rationale", "step1", "step2", "step3")
# products named in step 3 matched to catalogue items (encode stage): user_id, products, item_ids (0 = none), sims
GROUNDING_FILE = "encode/{source}_grounding.parquet"
EMBEDDING = "embedding"
# the vector stores every output above is built from (slim.encode.store): <key>/<source>_<field>/ shards of
# (text_hash, embedding), keyed by the encoder settings and the exact text encoded ("_": outside the fingerprint)
ENCODE_STORE = "encode/_store"
TEXT_HASH = "text_hash"  # uint64, blake2b of the text as encoded; 0 = an empty text (a zero vector)

# teacher/ and student/ row shards
TEACHER_SHARDS = "teacher/rationales"  # *.parquet, columns PROMPT..WASTED_USD above, one row per selected user
TEACHER_ARCHIVE = "teacher/archive"  # every other paid row: superseded ones, users outside the selection
TEACHER_LOG = "teacher/log"  # append-only JSON lines, one file per worker actor, folded into shards
STUDENT_SHARDS = STUDENT_DIR  # *.parquet, beside the student stage's manifest
STUDENT_ARCHIVE = "student/_archive"  # rows of users no longer present ("_": Parquet readers of student/ skip it)
STUDENT_ADAPTER = "distill/adapter"  # the distill stage's LoRA adapter and the merged student it loads
STUDENT_MERGED = "distill/merged"
