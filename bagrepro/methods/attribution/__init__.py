"""White-box and black-box attribution methods behind one registry (paper.md section 3, item 10,
and the attribution benchmark, ``experiments/attribution_truth.py``).

The package:

- :mod:`.registry`: :func:`register_attribution`, :func:`attribute` (dispatch by name), the working
  copy every method runs on, :class:`MethodNotApplicable`, seeded draws;
- :mod:`.relu_rules`: backward rules for every ReLU call of a model (DeepExplain's eps-LRP and
  DeepLIFT, guided backpropagation, the deconvnet), whatever calls the ReLU;
- one module per family (:data:`FAMILIES`): :mod:`.gradients`, :mod:`.path`, :mod:`.lrp`,
  :mod:`.cams`, :mod:`.perturbation`. Each method is one decorated function computed by the library
  that maintains it (captum, zennit, pytorch-grad-cam, PAIR's saliency), imported inside the
  function, so importing this package (``run_all.py --help``, ``--list``) loads none of them.

The paper's four methods (:data:`PAPER_METHODS`) follow DeepExplain, which the paper used:
saliency, integrated_gradients, eps_lrp, deeplift. Every other method cites its paper and says
whose defaults it keeps in its docstring (``run_all.py --list`` prints them; the README's method
table lists family, library, defaults and passes per image).

Layouts: images [B, 3, H, W] (normalised: the model's input), targets [B] class indices,
attributions [B, 3, H, W] float32 with respect to the model's input. Everything is batched over
images. A method that cannot apply to a model raises :class:`MethodNotApplicable` with the reason.

Register your own (in a ``--plugin`` file or a notebook)::

    from bagrepro.methods.attribution import register_attribution

    @register_attribution("my_method", passes="1 forward + 1 backward")
    def my_method(net, images, targets, *, my_option: float = 0.5):
        '''What it computes, its source, and why each default.'''
"""

from bagrepro.methods.attribution.registry import (  # noqa: F401
    DEFAULT_IG_BATCH,
    FAMILIES,
    IMAGE_SIZE,
    MECHANICS_OPTIONS,
    METHODS,
    MODEL,
    NEEDS,
    PAPER_METHODS,
    AttributionMethod,
    MethodNotApplicable,
    attribute,
    attribution_methods,
    get_attribution,
    ig_internal_batch_size,
    positive,
    prepare,
    register_attribution,
    run_method,
    seeded_rng,
    target_logits,
    unregister_attribution,
    working_copy,
)
from bagrepro.methods.attribution.relu_rules import (  # noqa: F401
    DEEPLIFT_DELTA_THRESHOLD,
    RELU_CALLS,
    epsilon_rule,
    modified_gradient,
    relu_override,
    rescale_multiplier,
)
# the families register their methods on import (the paper's four are listed first whatever the order)
from bagrepro.methods.attribution import gradients  # noqa: F401,E402
from bagrepro.methods.attribution.cams import gradcam_layer  # noqa: F401,E402
from bagrepro.methods.attribution.lrp import deeplift_rescale, epsilon_lrp  # noqa: F401,E402
from bagrepro.methods.attribution.path import gradient_shap_baselines  # noqa: F401,E402
from bagrepro.methods.attribution.perturbation import (  # noqa: F401,E402
    cell_feature_mask,
    incremental_occlusion,
    occlusion_grid,
    occlusion_positions,
    occlusion_windows,
)
