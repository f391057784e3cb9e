"""Code defaults: the complete list of configuration keys.

Every key a YAML file or the command line may set is listed here, with its default.
A key that is not here is rejected by ``load_config`` (with the closest valid name), so
a typo never silently falls back to a default. Precedence: CLI > YAML > these values.

Values of ``None`` mean "no default; the model/data code derives it" (e.g. the SegFormer
decoder width comes from the backbone table when ``decoder_dim`` is None).
"""

# The dataset modules of src/data (src/data/<name>.py; see src/data/registry.py).
DATASET_NAMES = ("cityscapes", "ade20k", "custom", "imagenet")

# Keys whose value must be one of a list, checked by load_config after every override.
CHOICES = {
    "dataset.name": DATASET_NAMES,
    "eval_mode": ("whole", "slide"),
}

# Keys holding a fixed number of values, checked by load_config after every override:
# key -> (count, the form shown in errors, whether every value must be > 0).
LIST_FORMS = {
    "base_size": (2, "[H, W]", True),
    "crop_size": (2, "[H, W]", True),
    "ratio_range": (2, "[min ratio, max ratio]", True),
    "eval_base_size": (2, "[H, W]", True),
    "eval_crop_size": (2, "[H, W]", True),
    "eval_stride": (2, "[H, W]", True),
    "img_norm_mean": (3, "[R, G, B]", False),
    "img_norm_std": (3, "[R, G, B]", True),
    "betas": (2, "[beta1, beta2]", False),
}

DEFAULTS = {
    # ---- runtime -------------------------------------------------------------------
    "config_path": "",
    "device_target": "CPU",          # Ascend | GPU | CPU
    "device_id": 0,                  # overridden by the DEVICE_ID env var in scripts
    "mode": "GRAPH",                 # GRAPH | PYNATIVE
    "kernel_backend": "auto",        # auto | reference | cpu (src/models/backends; export
                                     # always builds reference)
    "jit_level": "",                 # GRAPH compile level: "" (MindSpore's choice per device),
                                     # O0 (kernel by kernel), O1 (+ automatic operator fusion)
    "seed": 1,
    "output_dir": "./output/",       # train.log and run artefacts go here

    # ---- distributed ---------------------------------------------------------------
    "run_distribute": False,
    "sync_bn": False,                # SyncBatchNorm across ranks (ignored on 1 device)
    "rank_save_ckpt": "rank0",       # rank0 | all: which ranks write checkpoints/eval
    "grad_fusion_split": [0.4],      # data parallel: fractions of the trainable parameters
                                     # (in order) where a new fused gradient all-reduce starts,
                                     # so the head's overlaps the backbone's backward (the
                                     # zoo ViT's split_point); [] = one all-reduce for all
    "dataset_sink_mode": True,       # Ascend/GPU: feed batches through the device queue and run
    "sink_size": -1,                 # this many steps per device call (-1: the largest that
                                     # divides the epoch and the checkpoint/eval intervals);
                                     # ignored on CPU, where MindSpore cannot sink

    # ---- mixed precision -----------------------------------------------------------
    "amp_level": "O0",               # O0 | O1 | O2 | O3
    "loss_scale_type": "dynamic",    # dynamic | fixed | none
    "loss_scale": 65536.0,           # initial (dynamic) or constant (fixed) scale
    "loss_scale_factor": 2.0,
    "loss_scale_window": 1000,

    # ---- model ---------------------------------------------------------------------
    "model": "segformer",            # segformer | segmenter | vit
    "backbone": "mit_b0",            # mit_b0..mit_b5 | vit_{tiny,small,base,large}_patch{16,32}_{224,384}
    "class_num": 19,
    "decoder": "mask_transformer",   # Segmenter: mask_transformer | linear
    "decoder_dim": None,             # SegFormer all-MLP width (None: 256 B0/B1, 768 B2-B5)
    "decoder_layers": 2,             # Segmenter Mask Transformer blocks
    "drop_path_rate": 0.1,           # encoder stochastic depth (max, linear over blocks)
    "drop_rate": 0.0,                # encoder dropout
    "decoder_dropout": 0.1,          # SegFormer head dropout / Segmenter decoder dropout
    "decoder_drop_path_rate": 0.0,
    "image_size": None,              # ViT pretraining grid size (None: from backbone name)

    # ---- pretrained weights --------------------------------------------------------
    "load_ckpt": True,
    "pretrained_ckpt_path": "",
    "drop_head": False,              # convert_model: skip classifier tensors whose class count
                                     # differs from class_num (left freshly initialised)

    # ---- data ----------------------------------------------------------------------
    "data_path": "./data/cityscapes/",
    "dataset": {                     # null: the dataset module's value (src/data/<name>.py)
        "name": "cityscapes",        # one of DATASET_NAMES above
        "img_dir": None,             # <data_path>/<img_dir>/<split>/**/<name><img_suffix>
        "ann_dir": None,             # <data_path>/<ann_dir>/<split>/**/<name><seg_map_suffix>
        "img_suffix": None,
        "seg_map_suffix": None,
        "train_split": None,
        "val_split": None,
        "class_names": None,         # list of names, one per class
        "palette": None,             # list of [R, G, B], one per class
        "reduce_zero_label": None,   # label files: 0 = ignore, k -> class k-1 (ADE20K)
        "label_map": None,           # {file value: value}, applied before reduce_zero_label
    },
    "ignore_label": 255,
    "batch_size": 2,                 # per device
    "dataset_num_parallel_workers": 4,
    "check_data": False,             # scan every image/label before training (= tools/verify_dataset.py)
    "base_size": [1024, 2048],       # (H, W) the image is resized to before the ratio jitter
    "crop_size": [1024, 1024],       # (H, W) network input during training
    "ratio_range": [0.5, 2.0],
    "cat_max_ratio": 0.75,
    "flip_prob": 0.5,
    "photometric_distortion": True,
    "img_norm_mean": [123.675, 116.28, 103.53],
    "img_norm_std": [58.395, 57.12, 57.375],
    # ImageNet (ViT)
    "train_image_size": 224,
    "eval_image_size": 224,
    "interpolation": "BILINEAR",
    "crop_min": 0.08,
    "autoaugment": "",               # "" | autoaugment | randaugment
    "mixup": 0.0,                    # mixup alpha (0: off)
    "cutmix": 0.0,                   # cutmix alpha (0: off)
    "label_smooth_factor": 0.0,
    # segmentation cross entropy, mmseg 0.x CrossEntropyLoss + OHEMPixelSampler names
    "loss": {
        "avg_non_ignore": True,      # mean over non-ignored pixels (False: over all pixels
                                     # of the batch, mmseg 0.x's default)
        "class_weight": None,        # [class_num] per-class weights (None: all 1)
        "ohem_thresh": None,         # OHEM: keep pixels with p(label) < thresh (None: off)
        "ohem_min_kept": 100000,     # ... and at least this many hardest per image
    },
    "eval_batch_size": 1,

    # ---- optimisation --------------------------------------------------------------
    "optimizer": "adamw",            # adamw | sgd
    "lr": 6.0e-5,                    # peak learning rate (per global batch as configured)
    "min_lr": 0.0,
    "betas": [0.9, 0.999],
    "momentum": 0.9,
    "nesterov": False,               # sgd: Nesterov momentum (torch semantics)
    "weight_decay": 0.01,
    # Per-parameter lr / weight-decay multipliers, mmcv's DefaultOptimizerConstructor rule
    # (src/engine/optim.py): the first of custom_keys (longest first) contained in the full
    # parameter name applies; otherwise norm-layer parameters get norm_decay_mult and
    # parameters named "bias" get bias_decay_mult. Each recipe states its own.
    "paramwise": {
        "custom_keys": {},           # {name substring: {lr_mult: x, decay_mult: y}}
        "bias_decay_mult": 1.0,
        "norm_decay_mult": 1.0,
    },
    "lr_schedule": "poly",           # poly | cosine | constant
    "poly_power": 1.0,
    "warmup_iters": 0,
    "warmup_epochs": 0,
    "warmup_ratio": 1.0e-6,
    "clip_grad_norm": 0.0,           # global-norm clipping (0: off)
    "epoch_size": 200,               # 0 when scheduling by max_iters
    "max_iters": 0,                  # > 0: train this many iterations (epoch_size 0)

    # ---- logging and checkpoints ---------------------------------------------------
    "train_log_interval": 100,
    "save_checkpoint": True,
    "save_checkpoint_epoch_interval": 1,
    "save_checkpoint_steps": 0,      # > 0: also a checkpoint every this many iterations
    "overwrite_checkpoints": False,  # True: a new run deletes the checkpoints of an earlier one
    "max_consecutive_overflow_steps": 100,  # stop after this many non-finite steps in a row
    "save_best_ckpt": True,
    "keep_checkpoint_max": 10,
    "checkpoint_path": "./checkpoint/",
    "resume_ckpt": "",
    "auto_resume": False,

    # ---- evaluation ----------------------------------------------------------------
    "run_eval": True,
    "eval_start_epoch": 0,
    "eval_interval": 1,              # epochs (epoch_size runs)
    "eval_interval_iters": 0,        # iterations (max_iters runs; 0: at the last one only)
    "eval_ckpt_path": "",
    "eval_log_interval": 100,
    "eval_mode": "whole",            # whole | slide
    "eval_base_size": [1024, 2048],  # (H, W) the image is resized to (keep ratio) before inference
    "eval_size_divisor": 0,          # then each side rounded up to a multiple (NVlabs AlignedResize; 0: off)
    "eval_crop_size": [1024, 1024],  # slide window (H, W)
    "eval_stride": [768, 768],       # slide stride (H, W)
    "eval_scales": [1.0],            # multi-scale ratios of eval_base_size
    "eval_flip": False,

    # ---- inference -----------------------------------------------------------------
    "infer_copy_original_img": True,
    "infer_save_gray_img": True,
    "infer_save_color_img": True,
    "infer_save_overlap_img": True,
    "infer_log_interval": 100,
    "infer_ckpt_path": "",
    "infer_output_path": "./infer_result/",
    "infer_video": False,            # infer.py: a folder of images is the frames of one video
                                     # (a video file always is): write <name>_overlay.mp4
    "infer_video_fps": 0.0,          # output video rate (0: the input's; 25 for frames)
    "format_only": False,            # infer.py: write only the benchmark's submission files
                                     # (Cityscapes: labelIds PNGs named city_seq_frame, + zip)

    # ---- export --------------------------------------------------------------------
    "export_ckpt_path": "",
    "export_format": "MINDIR",       # MINDIR | AIR | ONNX
    "export_file_name": "",          # "" : the config file's name
    "export_input_shape": [1, 3, 1024, 2048],
}
