"""The demo plugin: a generated world, a demo zoo trained on it, and the demo profile.

Importing this package registers the demo profile (torch-free, so ``run_all.py --help`` stays
light); using the profile imports :mod:`bagrepro.demo.plugin`, which registers the demo zoo in the
model registry and the demo world's test split as the image source ``'demo'``. Nothing in the core
(``bagrepro.models``, ``bagrepro.data``, the methods, the harness) imports this package.
"""

from __future__ import annotations

from types import MappingProxyType

from bagrepro.harness.profiles import Profile, frozen, register_profile, stand_ins
from bagrepro.demo.zoo import DEMO_ZOO

#: paper role -> demo model (one VGG and one ResNet stand in for both sizes of each)
DEMO_ROLES = stand_ins({name: entry.roles for name, entry in DEMO_ZOO.items()})

DEMO_PROFILE = register_profile(Profile(
    name="demo",
    description="the embedded default: a generated world and a demo zoo trained on it (offline, CPU, minutes)",
    data="demo",
    models=tuple(DEMO_ZOO),
    stand_ins=MappingProxyType(DEMO_ROLES),
    pretrained=True,
    # the first 600 of the 900 test images (50 per class, shuffled): every experiment of a cold run
    # fits in minutes on 2 CPU cores; each number carries its interval, so the sample size shows
    num_images=600,
    batch_size=100,
    accuracy_metric="top1",  # 12 classes: top-5 is 100 % for every model
    plugin="bagrepro.demo.plugin",
    settings=frozen({
        "runtime": {"batch_size": 16, "repeats": 3, "warmup": 1},
        # mask sides 12-36 px: 10-30 % of the 121 px side (the paper: 8-64 of 224 px, 4-29 %); 36 px
        # separates the masks by more than BagNet-33's q, so eq. 1 must hold exactly for all three
        "interactions": {"patch_sizes": (12, 18, 24, 36), "num_images": 24},
        # 16 of the 225 8 x 8 patches (7 %; the paper's 100 of 784 are 13 %); IG with 32 steps (paper 100)
        "masking": {"num_images": 24, "steps": 16, "random_seeds": 2, "ig_steps": 32},
        # Gatys's L-BFGS on the demo VGG-16 (the profile's VGG-19 stand-in), fewer iterations than their 2000
        "scrambling": {"grids": (2, 4, 8), "texture_iterations": 100, "texture_images": 32,
                       "texture_note": "100 L-BFGS iterations on the demo VGG-16 (the VGG-19 stand-in, trained on "
                                       "the demo world, not ImageNet)"},
        "heatmaps": {"num_images": 6, "ig_steps": 32},
        "top_patches": {"num_classes": 3, "k": 7},
        "misclassified": {"num_images": 4},
        # sized so that this experiment's cold run fits 20 minutes on 2 cores (issue 24): 48 images
        # per model, fewer samples and steps than the methods' defaults (IG 100 steps, SmoothGrad 50,
        # Gradient SHAP / Expected Gradients 20, Kernel SHAP 200, LIME 200, Guided IG 200, Blur IG 100,
        # XRAI 100 per baseline, Shapley sampling 25 orders), a coarser occlusion stride, 32 px cells
        # for the perturbation methods (16 at 121 px), XRAI's fast ranking, Part C's curves over 8
        # patches and ROAD MoRF only, and two methods left out for their cost here: Score-CAM and
        # Ablation-CAM (1 + 512 forward passes per image on the demo BagNets); they run on the smoke
        # and paper profiles. Every number carries its interval, so the sample size shows.
        "attribution_truth": {"num_images": 48, "batch_size": 16, "ig_steps": 16, "smoothgrad_samples": 8,
                              "shap_samples": 8, "kernel_shap_samples": 48, "lime_samples": 48,
                              "occlusion_stride": 16, "perturbations_per_eval": 64, "references": 8, "cell": 32,
                              "proxy_steps": 8,
                              # XRAI "fast": the library's one-pass segment ranking (same IG), ~45 % cheaper
                              "options": (("eg_samples", 8), ("guided_ig_steps", 16), ("blur_ig_steps", 8),
                                          ("xrai_steps", 8), ("xrai_algorithm", "fast"), ("shapley_samples", 2)),
                              "left_out": ("score_cam", "ablation_cam"),
                              # ROAD LeRF imputes 80 % of the pixels: ~150 ms per (image, method) on the CPU
                              "road": ("road_morf",)},
    }),
))
