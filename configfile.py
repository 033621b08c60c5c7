"""Hyperparameters and paths for every script of the plankton embedding lab.

Edit the values here, or override any of them for one run with `--name=value`
(e.g. `python train.py --lr=0.001 --seen_classes="['a', 'b']"`). Relative paths are
taken relative to this file's folder (the repository root). The comment lines directly
above a setting and the comment at the end of its line say what it means: `--help`
shows them, read from this file.
"""

# --- data -----------------------------------------------------------------------
# A folder with one sub-folder of images per class. The default is the synthetic demo
# data set, generated on first use. For FlowCamNet use ".../FlowCamNet/imgs".
data_root = "data/demo"
# Classes the classifier is trained on (names of sub-folders of data_root), at least 2; or "all": every class folder
# that is not an unseen class, those with fewer than min_images_per_class images left out (docs/many-classes.md).
seen_classes = ["chainthin", "darksphere", "Rhabdonellidae", "Odontella", "Codonellopsis", "Neoceratium"]
# Classes held out of training, used only for embeddings analysis and transfer learning.
unseen_classes = ["Retaria", "Thalassionematales", "Chaetoceros"]
val_fraction = 0.05  # share of each seen class for validation, in (0, 1)
test_fraction = 0.20  # share of each seen class for testing, in (0, 1); val + test < 1
min_images_per_class = 10  # classes with fewer images are refused (too few to split), >= 3
max_images_per_class = 0  # 0: use every image; N: a seeded sample of at most N per class (quick trials)
rebuild_split = False  # True: discard results/split.csv and draw the split anew
# Near-copies (one particle re-saved, re-cropped or shifted by a few pixels, or brightened; docs/similar.md): "report"
# lists them in results/near_copies.csv and report.py gives the test accuracy without the test images that have one
# in train; "group" also keeps each near-copy group in one split, as byte-identical copies are kept.
near_copies = "report"

# --- labels from tables (docs/labels-from-a-table.md) ------------------------------
# None: the labels are the class folders' names under data_root. Otherwise a CSV or TSV table of image paths and
# labels (paths relative to the table's folder, or absolute), a folder of such tables (EcoTaxa's export: one TSV
# per sample), or a list of both, read in addition to the class folders.
labels_file = None
# None: the columns are found by name (img_file_name / object_annotation_category of an EcoTaxa export, or path,
# file, filename, image ... and label, class, category, taxon ...); or ["path column", "label column"].
labels_columns = None
# The rows of an EcoTaxa export used, by object_annotation_status: "validated", "predicted", "dubious". Adding
# "predicted" trains on a classifier's guesses as if a taxonomist had checked them.
labels_statuses = ["validated"]
# None, or a two-column table (header line, then category, class): turns the tables' categories (EcoTaxa names
# such as "Calanoida<Copepoda") into the lab's classes, many to one; an empty class leaves a category out.
labels_map = None

# --- model ----------------------------------------------------------------------
image_size = 128  # square input side in pixels, 32..1024 (trunk output: 64 x size/8 x size/8)
# "IMAGENET1K_V1" (torchvision, downloaded once into $TORCH_HOME), a path to a state-dict
# file of torchvision's efficientnet_v2_s, or None for a random trunk (for tests only).
backbone_weights = "IMAGENET1K_V1"
dropout = 0.2  # dropout before the last layer, in [0, 1)
embedding_dim = 128  # width of the embedding layer (second-to-last), >= 2

# --- training -------------------------------------------------------------------
batch_size = 64  # images per optimisation step, >= 1
lr = 0.0014  # Adam learning rate, > 0
epochs = 50  # maximum number of epochs, >= 1
patience = 5  # stop after this many epochs without a better validation loss, >= 1
# Early stopping: "averaged" (the head's weights averaged over epochs, an exponential moving average; the averaged
# weights are validated, stopped on and kept, so one lucky or unlucky epoch of a small validation split does not
# decide the model), "smoothed" (stops on a moving average of the validation loss) or "raw" (each epoch's own
# validation loss, the lab's rule before issue 34). Measured over seeds: docs/training-recipe.md.
stopping = "averaged"
# Dihedral views (plankton have no up or down): the frozen trunk's output is cached for the first trunk_views of
# the 8 flips and quarter turns of each image (1: the image as it is; 2: and its half turn; 4: its four turns; 8:
# and their mirror images), the head trains on a random view of each image per epoch, and every prediction
# averages the views. The trunk's time and the cache's size grow trunk_views times. 1, 2, 4 or 8; measured:
# docs/training-recipe.md.
trunk_views = 1
# "none" (the mission: plain cross-entropy) or "balanced" (each class weighted n / (classes x n_class) in the
# training and validation loss, so a rare class counts as much as a common one; for strongly imbalanced data).
class_weighting = "none"
resume = False  # True: continue from checkpoints/last.pth (after a crash or Ctrl-C)
# Seeds random, numpy, torch (the head's initialisation and shuffles), the split, scikit-learn and UMAP; any int >= 0.
# Not a random trunk's weights (backbone_weights=None): those are always the same (backbone.RANDOM_TRUNK_SEED).
seed = 42

# --- compute --------------------------------------------------------------------
device = "auto"  # "auto" (cuda, then mps, then cpu), "cpu", "cuda", "cuda:1", "mps"
precision = "auto"  # frozen-trunk pass: "auto", "fp32", "bf16", "fp16" ("auto": bf16/fp16 where native)
head_precision = "auto"  # head training: "auto" (bf16 where native: GPU, AVX512-BF16/AMX CPU), "fp32", "bf16"
num_workers = 2  # image-decoding worker processes for the trunk pass, >= 0
# Torch threads on a CPU for the trunk pass and the head's epochs: "auto" times one thread against torch's count
# on their own batches every 30 s or so and keeps the faster (idle, two threads were 1.5x faster for the head on the
# project's 2-core machine; beside one other busy process, one thread was 7x faster: docs/performance.md, "The head
# under load"), or a number (at most torch's count: OMP_NUM_THREADS or the cores), with which the trained head
# repeats bit for bit on one machine.
cpu_threads = "auto"
output_dir = "."  # root of checkpoints/, results/, figs/, embeddings/, cache/

# --- analysis -------------------------------------------------------------------
umap_samples_per_split = 2500  # embeddings sampled from each of train, test, unseen for the 2-D map, >= 10
reduction_method = "umap"  # "umap", "tsne" or "pca"
umap_n_neighbors = 15  # UMAP neighbourhood size, >= 2
umap_min_dist = 0.1  # UMAP minimum distance between embedded points, in [0, 1]
distance_max_per_class = 1000  # images per class in the average distances; a seeded sample above (0: all), >= 2
gallery_size = 5  # images per gallery row (closest, furthest, closest of other classes), >= 1
transfer_repeats = 5  # seeded repeats per training size in transfer learning, >= 1
transfer_test_fraction = 0.30  # share of each unseen class held out to score transfer learning, in (0, 1)
transfer_max_images = 10000  # most images on each side of transfer learning: a seeded per-class sample above it
knn_k = 10  # neighbours of the kNN transfer classifier (capped by the training size), >= 1

# --- label audit (audit.py) -----------------------------------------------------------
# Stratified, seeded folds of the out-of-fold probabilities: each image is scored by a model fitted on the other
# folds' training and validation images, >= 2.
audit_folds = 5
# That model: "linear" (a logistic regression on the pooled trunk features) or "head" (the lab's head retrained per
# fold as train.py trains it, stopped on a tenth of its training images; needed by
# abundance_calibration="out_of_fold"). What each finds and costs, measured: docs/label-audit.md.
audit_model = "linear"

# --- novelty and prediction (novelty.py, predict.py) -------------------------------
novelty_knn_k = 10  # k of the kNN novelty score: distance to the k-th nearest training embedding, >= 1
novelty_bank_max = 20000  # most training embeddings in the kNN score's reference (big classes sampled); 0: all
# The score behind predict.py's possibly_new flag: "mahalanobis_knn" (the mean of the mahalanobis and knn scores,
# each standardised), "msp", "energy", "knn" or "mahalanobis". How well each tells new taxa, measured:
# docs/novelty.md.
novelty_score = "mahalanobis_knn"
# Folder of new images to classify with predict.py, searched recursively; a relative path is taken relative to
# the repository, like data_root. None: predict.py asks for it.
predict_dir = None
ecotaxa = False  # True: predict.py also writes results/ecotaxa_predictions.tsv for an EcoTaxa import
# A cruise of many samples in one predict.py run (docs/cruise.md). None: predict_dir is one sample. "subfolders":
# each first-level sub-folder of predict_dir is a sample, named after it. Or the path of a CSV/TSV table with a
# `sample` column (an EcoTaxa export's `sample_id` too) and the images' paths relative to predict_dir.
samples = None
# None, or a CSV/TSV table of the samples: a `sample` column, `volume_l` (the litres of water imaged, for the
# concentrations per litre) and any other columns (date, station, depth ...), carried into the outputs.
sample_metadata = None
# similar.py: an image, or a folder of images (searched recursively), anywhere; its similar_k nearest embedded images
# (train, val, test, unseen, predict) by cosine distance. None: similar.py asks for it.
query = None
similar_k = 10  # neighbours listed per query image, >= 1
# predict.py's results/abundances.csv (docs/abundances.md): each taxon's share of the sample, corrected for the
# sample's class proportions differing from the training set's. The correction: "emq_nbvs" (EM of Saerens et al.
# 2002 on re-calibrated probabilities), "emq_bcts", "emq", "pacc", "acc", "pcc" or "cc" (none: the plain count of
# predicted classes). How close each comes to the truth, measured: docs/abundances.md.
abundance_method = "emq_nbvs"
abundance_bootstrap = 200  # bootstrap draws behind each 95 % interval of abundances.csv, >= 20
# The images that calibrate the correction, never a test image: "validation" (the validation split), or
# "out_of_fold" (audit.py's out-of-fold outputs of the training and validation images, 16 times as many; run
# audit.py --audit_model=head first). The two compared, measured: docs/abundances.md.
abundance_calibration = "validation"
# Operating points (evaluate.py's results/operating_points.csv, predict.py's `accepted`; docs/operating-points.md):
# the precision that the predictions accepted without a look must have, certified on the validation split per class
# where a class has enough images, pooled over the others; None turns accepting off. In (0, 1).
accept_precision = 0.95
accept_confidence = 0.9  # the confidence of that guarantee (each class's, and the pooled one's, on its own), in (0, 1)
