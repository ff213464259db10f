"""Destroying global structure while keeping local statistics: tile scrambling and texturisation.

Images are [B, 3, H, W] floats in [0, 1].

- :func:`scramble_tiles`: cut into an n x n grid of tiles and shuffle them by a seeded permutation
  per image (rows/columns beyond a whole tile stay in place).
- :func:`texturise`: the texture synthesis of Gatys, Ecker & Bethge (2015, "Texture Synthesis Using
  Convolutional Neural Networks", NIPS 28, pp. 262-270; arXiv:1505.07376): starting from noise,
  find an image whose Gram matrices of VGG feature maps match the original's.

The Gatys setting, as written here:

- the network: the caller's VGG (torchvision-style, a ``features`` Sequential; VGG-19 in the paper)
  with every max-pool replaced by an average pool of the same geometry (the paper: average pooling
  gives a better gradient flow; their released ``Models/VGG_ave_pool_deploy.prototxt`` does it);
  see :func:`average_pool_features`;
- the layers: conv1_1 (the rectified response, i.e. the output of the first ReLU) and pool1..pool4,
  see :func:`gatys_layers`;
- the loss: per layer l with N_l channels and M_l positions, G_l = F_l F_l^T and
  E_l = 1 / (4 N_l^2 M_l^2) * sum_ij (G_l - A_l)_ij^2 (A_l: the original's Gram matrix), the total
  sum_l w_l E_l with equal weights w_l = 1 (:data:`GATYS_LAYER_WEIGHT`: the paper's results set
  w_l = 1 for every layer up to the top-most one included and 0 above; the released notebook uses
  1e9 for all five, equal too; any common scale leaves the optimum and loss / initial loss alone);
- the optimiser: L-BFGS on the pixels from seeded noise, pixels kept in the valid box [0, 1]
  (Gatys et al.: scipy's L-BFGS-B with bounds), :data:`GATYS_ITERATIONS` iterations and a memory of
  :data:`GATYS_HISTORY` pairs, see :func:`batched_lbfgs`.

Deviations, all small and on purpose: the start is uniform white noise in [0, 1] per image
(the released code starts from N(0, 1) in Caffe's 0..255 mean-subtracted input space, i.e. the
mean colour plus faint noise, projected onto its bounds); the box is the valid pixel range [0, 1]
(theirs is the source image's min..max over all channels); the optimiser is our batched projected
L-BFGS rather than scipy's L-BFGS-B (which takes generalised Cauchy points on the box).

No well-kept library ships this for torchvision's VGG, so it is written here.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from bagrepro.core.errors import ConfigError

#: L-BFGS iterations of the Gatys synthesis. The paper names L-BFGS but no iteration count; the
#: number is the authors' released code: leongatys/DeepTextures, ``Example.ipynb`` (the notebook
#: that synthesises the paper's Fig. 3A pebbles), ``maxiter = 2000`` passed to
#: ``scipy.optimize.minimize(method='L-BFGS-B', options={'maxiter': maxiter, 'maxcor': m,
#: 'ftol': 0, 'gtol': 0})`` in ``DeepImageSynthesis/ImageSyn.py``.
GATYS_ITERATIONS = 2000
#: L-BFGS memory (pairs kept per image): the same notebook's ``m = 20`` (scipy's ``maxcor``), not
#: torch.optim.LBFGS's 100; it also keeps the per-image histories small: 2 x 20 x 3HW floats per
#: image (24 MB per 224 px image in float32).
GATYS_HISTORY = 20
#: w_l of every texture layer (Gatys et al. 2015, results: w_l = 1 for the layers included)
GATYS_LAYER_WEIGHT = 1.0
#: :func:`converged`'s default: a texture counts as converged when its Gatys loss fell to 1 % of the
#: loss at its starting noise. Our choice (the paper gives no criterion; its code runs all
#: iterations with ftol = gtol = 0).
CONVERGED_RATIO = 1e-2
#: learning rates: L-BFGS's step scale (torch.optim.LBFGS's default 1), Adam's (the fast variant)
LBFGS_LR = 1.0
ADAM_LR = 0.05
OPTIMIZERS = ("lbfgs", "adam")


def scramble_tiles(images: torch.Tensor, grid: int, seed: int) -> torch.Tensor:
    """Shuffle the n x n tiles of every image; image b uses permutation b of a generator seeded ``seed``."""
    batch, channels, height, width = images.shape
    tile_h, tile_w = height // grid, width // grid
    if tile_h == 0 or tile_w == 0:
        raise ConfigError(f"cannot cut a {height}x{width} image into a {grid}x{grid} grid of tiles")
    generator = torch.Generator().manual_seed(seed)
    permutation = torch.rand(batch, grid * grid, generator=generator).argsort(1).to(images.device)
    body = images[..., : grid * tile_h, : grid * tile_w]
    tiles = body.reshape(batch, channels, grid, tile_h, grid, tile_w).permute(0, 2, 4, 1, 3, 5)
    tiles = tiles.reshape(batch, grid * grid, channels, tile_h, tile_w)
    shuffled = tiles.gather(1, permutation[:, :, None, None, None].expand_as(tiles))
    shuffled = shuffled.reshape(batch, grid, grid, channels, tile_h, tile_w).permute(0, 3, 1, 4, 2, 5)
    out = images.clone()
    out[..., : grid * tile_h, : grid * tile_w] = shuffled.reshape(batch, channels, grid * tile_h, grid * tile_w)
    return out


# ---- the network ----------------------------------------------------------------------------------
def _features(vgg: nn.Module) -> nn.Sequential:
    features = getattr(vgg, "features", None)
    if not isinstance(features, nn.Sequential):
        raise ConfigError(f"texture synthesis needs a VGG with a `features` Sequential, got {type(vgg).__name__}")
    return features


def gatys_layers(vgg: nn.Module) -> list[int]:
    """Indices in ``vgg.features`` of Gatys et al.'s texture layers: conv1_1 (the output of the first
    ReLU: Gatys' 'conv1_1' is the rectified response) and pool1..pool4 (the outputs of the first
    four pooling layers, max or average). Five indices, ascending."""
    features = _features(vgg)
    relus = [i for i, m in enumerate(features) if isinstance(m, nn.ReLU)]
    pools = [i for i, m in enumerate(features) if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d))]
    if not relus or len(pools) < 4:
        raise ConfigError(f"texture synthesis needs a VGG with a ReLU and at least 4 pooling layers in `features`, "
                          f"{type(vgg).__name__} has {len(relus)} ReLUs and {len(pools)} pools")
    return sorted({relus[0], *pools[:4]})


def average_pool_features(vgg: nn.Module) -> nn.Sequential:
    """A copy of ``vgg.features`` for texture synthesis: every MaxPool2d replaced by an AvgPool2d of
    the same kernel, stride, padding and ceil mode, every ReLU non-inplace (an in-place ReLU would
    overwrite what the pixel gradient needs), parameters frozen, in eval mode. The caller's model
    is not touched (its modules and parameters are copied)."""
    gatys_layers(vgg)  # the same checks (a features Sequential, at least 4 pools)
    modules = []
    for module in _features(vgg):
        if isinstance(module, nn.MaxPool2d):
            dilation = module.dilation if isinstance(module.dilation, tuple) else (module.dilation,)
            if any(d != 1 for d in dilation):
                raise ConfigError(f"cannot replace a dilated max-pool ({module}) by an average pool")
            modules.append(nn.AvgPool2d(module.kernel_size, module.stride, module.padding, ceil_mode=module.ceil_mode))
        elif isinstance(module, nn.ReLU):
            modules.append(nn.ReLU(inplace=False))
        else:
            modules.append(copy.deepcopy(module))
    features = nn.Sequential(*modules).eval()
    for parameter in features.parameters():
        parameter.requires_grad_(False)
    return features


# ---- the loss -------------------------------------------------------------------------------------
def gram_matrices(features: nn.Sequential, layers: Sequence[int], inputs: torch.Tensor) -> list[torch.Tensor]:
    """Per layer in ``layers`` (ascending indices into ``features``) the Gram matrices divided by the
    number of positions, G_l / M_l = F_l F_l^T / M_l: [B, N_l, N_l]. (Dividing by M_l here, as the
    released code does, keeps the numbers small; :func:`gatys_loss` accounts for it.)"""
    grams, x, wanted = [], inputs, set(layers)
    for index, module in enumerate(features[: max(layers) + 1]):
        x = module(x)
        if index in wanted:
            flat = x.flatten(2)
            grams.append(flat @ flat.transpose(1, 2) / flat.shape[-1])
    return grams


def gatys_loss(grams: Sequence[torch.Tensor], targets: Sequence[torch.Tensor],
               weights: Sequence[float] | None = None) -> torch.Tensor:
    """Gatys et al.'s texture loss per image, [B]: sum_l w_l E_l with
    E_l = 1 / (4 N_l^2 M_l^2) sum_ij (G_l - A_l)_ij^2 = 1 / (4 N_l^2) sum_ij (G_l/M_l - A_l/M_l)_ij^2
    (``grams``, ``targets``: G_l / M_l and A_l / M_l from :func:`gram_matrices`; targets may have
    batch 1 or B); ``weights`` default :data:`GATYS_LAYER_WEIGHT` for every layer."""
    weights = [GATYS_LAYER_WEIGHT] * len(grams) if weights is None else list(weights)
    total = 0
    for weight, gram, target in zip(weights, grams, targets, strict=True):
        channels = gram.shape[-1]
        total = total + weight * ((gram - target) ** 2).sum((1, 2)) / (4 * channels ** 2)
    return total


# ---- the optimiser --------------------------------------------------------------------------------
@dataclass(frozen=True)
class LbfgsResult:
    """x: the final points (shape of ``x0``); loss, initial_loss: [B] float64 at the final and the
    starting point; iterations: [B] iterations each problem ran (a problem stops early when
    converged); trace: [iterations run + 1, B] float64, the loss after every iteration (row 0: the
    start; never increasing along a column)."""

    x: torch.Tensor
    loss: torch.Tensor
    initial_loss: torch.Tensor
    iterations: torch.Tensor
    trace: torch.Tensor


def _project(x: torch.Tensor, bounds: tuple[float, float] | None) -> torch.Tensor:
    return x if bounds is None else x.clamp(bounds[0], bounds[1])


def _free(x: torch.Tensor, grad: torch.Tensor, bounds: tuple[float, float] | None) -> torch.Tensor:
    """1 where a coordinate may move, 0 where it sits on a bound its negative gradient points out of."""
    if bounds is None:
        return torch.ones_like(x)
    blocked = ((x <= bounds[0]) & (grad > 0)) | ((x >= bounds[1]) & (grad < 0))
    return (~blocked).to(x.dtype)


def _two_loop(gradient: torch.Tensor, steps: torch.Tensor, changes: torch.Tensor, rho: torch.Tensor,
              newest: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The L-BFGS two-loop recursion for every row at once: -H_b g_b, [B, D].

    steps, changes: [B, m, D] ring buffers of s and y (slot ``newest[b]`` the newest pair of row b,
    older ones before it, cyclically); rho: [B, m], 1 / s'y, 0 for an empty slot (an empty slot so
    contributes nothing); scale: [B], the initial inverse Hessian s'y / y'y of the newest pair.
    The loops run over the m slots, newest first in the first loop and oldest first in the second,
    as torch.optim.LBFGS's do; every operation is a row-wise tensor op over the batch."""
    batch, memory, _ = steps.shape
    rows = torch.arange(batch, device=gradient.device)
    slots = [(newest - j) % memory for j in range(memory)]  # newest first
    q = -gradient
    alphas = []
    for slot in slots:
        s, y, r = steps[rows, slot], changes[rows, slot], rho[rows, slot]
        alpha = r * (s * q).sum(1)
        q = q - alpha[:, None] * y
        alphas.append(alpha)
    direction = q * scale[:, None]
    for slot, alpha in zip(reversed(slots), reversed(alphas)):
        s, y, r = steps[rows, slot], changes[rows, slot], rho[rows, slot]
        beta = r * (y * direction).sum(1)
        direction = direction + (alpha - beta)[:, None] * s
    return direction


def batched_lbfgs(closure: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], x0: torch.Tensor, *,
                  iterations: int, history: int = GATYS_HISTORY, lr: float = LBFGS_LR,
                  bounds: tuple[float, float] | None = (0.0, 1.0), tolerance_grad: float = 1e-7,
                  tolerance_change: float = 1e-9, armijo: float = 1e-4, backtracks: int = 30,
                  shrink: float = 0.5) -> LbfgsResult:
    """Minimise B independent problems at once with L-BFGS, each with its own history, step and stop.

    ``closure(x)`` takes x [B, ...] and returns (loss [B], gradient [B, ...]); problem b's loss must
    depend on row b of x only. Hand-written because torch.optim.LBFGS treats all parameters as one
    vector: the images of a batch would share one history, one step size and one stopping rule,
    i.e. one joint optimisation whose result for an image depends on the other images of the batch.
    Here every image's result is what it would be alone (up to floating-point reduction order).

    The update rules are torch.optim.LBFGS's (``line_search_fn=None``): a pair (s, y) enters the
    history only when s'y > 1e-10, the oldest leaves beyond ``history`` pairs; the initial inverse
    Hessian is s'y / y'y of the newest pair (1 before any); the two-loop recursion gives the
    direction; the first trial step is min(1, 1 / |g|_1) * lr on a problem's first iteration (and
    after a reset, below) and lr afterwards. Added, per problem:

    - bounds: the box (``None``: unconstrained). After every step the point is projected onto it.
      Coordinates on a bound whose negative gradient points out of the box are held fixed for the
      iteration (their gradient is zeroed before the recursion and their direction after it), so
      the direction stays a descent direction of the box problem (projected L-BFGS);
    - a backtracking Armijo line search on the projected path x(t) = P(x + t d): accept the first
      t = t0, t0 * shrink, ... with f(x(t)) <= f(x) + armijo * g'(x(t) - x), so a problem's loss
      never increases. The line search is batched: every trial evaluates the whole batch at once;
      problems that already accepted keep their step (and point) while the others shrink theirs;
    - when no step is accepted after ``backtracks`` halvings, the problem's history is cleared and
      the next iteration starts again from the (scaled) projected gradient; a second failure in a
      row ends that problem (it cannot decrease any more in floating point);
    - stop per problem when the projected gradient's largest entry fell to ``tolerance_grad`` times
      its value at the start, or when an accepted step moved no coordinate by more than
      ``tolerance_change`` or lowered the loss by no more than ``tolerance_change`` times the loss
      (the tolerances are torch's numbers; the gradient and loss ones are relative here, since the
      Gram loss's scale depends on the network's weights). A stopped problem keeps its point and
      simply stops moving; the batch keeps its shape.

    Returns an :class:`LbfgsResult`.
    """
    shape, batch = x0.shape, x0.shape[0]
    x = _project(x0.detach().reshape(batch, -1).clone(), bounds)
    size = x.shape[1]

    def evaluate(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loss, grad = closure(flat.view(shape))
        return loss.detach().to(torch.float64), grad.detach().reshape(batch, size).to(x.dtype)

    loss, grad = evaluate(x)
    initial_loss, trace = loss.clone(), [loss.clone()]
    memory = max(int(history), 1)
    steps = x.new_zeros(batch, memory, size)
    changes = x.new_zeros(batch, memory, size)
    rho = x.new_zeros(batch, memory)
    newest = torch.full((batch,), memory - 1, dtype=torch.long, device=x.device)
    scale = x.new_ones(batch)
    fresh = torch.ones(batch, dtype=torch.bool, device=x.device)  # first iteration, or just reset
    done = ~torch.isfinite(loss)
    done_count = torch.zeros(batch, dtype=torch.long, device=x.device)
    start_gradient = (_project(x - grad, bounds) - x).abs().amax(1)
    done |= start_gradient == 0

    for _ in range(iterations):
        if bool(done.all()):
            break
        active = ~done
        free = _free(x, grad, bounds)
        free_grad = grad * free
        direction = _two_loop(free_grad, steps, changes, rho, newest, scale) * free
        slope = (grad * direction).sum(1)
        # not a descent direction (only in floating point): clear the history, start from the gradient
        lost = active & ~(slope < 0) & ~fresh
        if bool(lost.any()):
            rho = torch.where(lost[:, None], torch.zeros_like(rho), rho)
            scale = torch.where(lost, torch.ones_like(scale), scale)
            direction = torch.where(lost[:, None], -free_grad, direction)
            fresh = fresh | lost
        first = torch.clamp(1.0 / free_grad.abs().sum(1), max=1.0) * lr
        step = torch.where(fresh, first, torch.full_like(first, lr)) * active

        accepted = done.clone()
        new_x, new_loss, new_grad = x.clone(), loss.clone(), grad.clone()
        for _trial in range(backtracks + 1):
            pending = ~accepted
            if not bool(pending.any()):
                break
            trial = torch.where(pending[:, None], _project(x + step[:, None] * direction, bounds), new_x)
            trial_loss, trial_grad = evaluate(trial)
            bound = loss + armijo * (grad * (trial - x)).sum(1).to(torch.float64)
            ok = pending & torch.isfinite(trial_loss) & (trial_loss <= bound)
            new_x = torch.where(ok[:, None], trial, new_x)
            new_loss = torch.where(ok, trial_loss, new_loss)
            new_grad = torch.where(ok[:, None], trial_grad, new_grad)
            accepted |= ok
            step = torch.where(pending & ~ok, step * shrink, step)

        moved = active & accepted
        failed = active & ~accepted
        done_count += active.long()
        # a failed line search: clear the history and retry from the gradient; twice in a row: stop
        done |= failed & fresh
        reset = failed & ~fresh
        rho = torch.where(reset[:, None], torch.zeros_like(rho), rho)
        scale = torch.where(reset, torch.ones_like(scale), scale)
        fresh = (fresh & ~moved) | reset

        s, y = new_x - x, new_grad - grad
        sy, yy = (s * y).sum(1), (y * y).sum(1)
        keep = moved & (sy > 1e-10)
        newest = torch.where(keep, (newest + 1) % memory, newest)
        rows = torch.nonzero(keep).flatten()
        if rows.numel():
            steps[rows, newest[rows]] = s[rows]
            changes[rows, newest[rows]] = y[rows]
            rho[rows, newest[rows]] = 1.0 / sy[rows]
        scale = torch.where(keep, sy / yy.clamp_min(torch.finfo(yy.dtype).tiny), scale)

        projected = (_project(new_x - new_grad, bounds) - new_x).abs().amax(1)
        small_step = s.abs().amax(1) <= tolerance_change
        small_change = (loss - new_loss) <= tolerance_change * loss.abs()
        done |= moved & ((projected <= tolerance_grad * start_gradient) | small_step | small_change)
        x, loss, grad = new_x, new_loss, new_grad
        trace.append(loss.clone())

    return LbfgsResult(x=x.view(shape), loss=loss, initial_loss=initial_loss, iterations=done_count,
                       trace=torch.stack(trace))


# ---- texture synthesis ----------------------------------------------------------------------------
@dataclass(frozen=True)
class TextureResult:
    """images: [B, 3, H, W] in [0, 1], the textures; loss, initial_loss: [B] float64, the Gatys loss
    of the texture and of its starting noise; iterations: [B] iterations run per image."""

    images: torch.Tensor
    loss: torch.Tensor
    initial_loss: torch.Tensor
    iterations: torch.Tensor


def seeded_noise(shape: Sequence[int], seeds: Sequence[int]) -> torch.Tensor:
    """Uniform noise in [0, 1], [len(seeds), *shape] float32 on the CPU: row b drawn by a CPU
    generator seeded ``seeds[b]`` (the same numbers on every device and in every batch)."""
    return torch.stack([torch.rand(tuple(shape), generator=torch.Generator().manual_seed(int(seed)))
                        for seed in seeds])


def texturise(images: torch.Tensor, vgg: nn.Module, normalize: Callable[[torch.Tensor], torch.Tensor], *,
              iterations: int = GATYS_ITERATIONS, seed: int = 0, seeds: Sequence[int] | None = None,
              optimizer: str = "lbfgs", lr: float | None = None, history: int = GATYS_HISTORY,
              layers: Sequence[int] | None = None) -> TextureResult:
    """Gatys et al. (2015) textures of ``images`` ([B, 3, H, W] in [0, 1]): for every image, an image
    of the same size whose Gram matrices at ``layers`` (default :func:`gatys_layers`: conv1_1,
    pool1..pool4) of ``vgg``'s features with average pools (:func:`average_pool_features`) match
    the original's; ``normalize`` maps [0, 1] pixels to the network's input.

    The start is uniform noise per image: image b uses seed ``seeds[b]``, default ``seed + b``. Each
    image's noise, optimisation and stopping are its own, so its texture does not depend on which
    other images share the batch (pass seeds tied to the images, e.g. their global indices, to make
    it independent of the batching too).

    optimizer:

    - ``"lbfgs"`` (default): Gatys et al.'s setting, :func:`batched_lbfgs` on the pixels in the box
      [0, 1] for ``iterations`` iterations (default :data:`GATYS_ITERATIONS`, the authors' code)
      with ``history`` pairs (default :data:`GATYS_HISTORY`); ``lr`` (default 1) scales the trial
      step, as torch.optim.LBFGS's does;
    - ``"adam"``: a fast approximation for the demo/smoke profiles, not Gatys: Adam (``lr`` default
      0.05) on sigmoid-parametrised pixels for ``iterations`` steps, same loss and network, so the
      losses compare.

    Computes in ``images``' dtype and device (the network copy is moved there). Returns a
    :class:`TextureResult`."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ConfigError(f"texturise needs images [B, 3, H, W], got shape {tuple(images.shape)}")
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"unknown texture optimizer {optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
    batch = images.shape[0]
    seeds = [seed + b for b in range(batch)] if seeds is None else [int(s) for s in seeds]
    if len(seeds) != batch:
        raise ConfigError(f"texturise got {len(seeds)} seeds for {batch} images")
    features = average_pool_features(vgg)
    layers = gatys_layers(vgg) if layers is None else sorted(int(i) for i in layers)
    if not layers or layers[0] < 0 or layers[-1] >= len(features):
        raise ConfigError(f"texture layers {layers} are not indices of the {len(features)} feature modules")
    features = features[: layers[-1] + 1].to(device=images.device, dtype=images.dtype)
    with torch.no_grad():
        targets = gram_matrices(features, layers, normalize(images))

    def losses(pixels: torch.Tensor) -> torch.Tensor:
        return gatys_loss(gram_matrices(features, layers, normalize(pixels)), targets)

    def closure(pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.enable_grad():
            pixels = pixels.detach().requires_grad_(True)
            loss = losses(pixels)
            (grad,) = torch.autograd.grad(loss.sum(), pixels)
        return loss.detach(), grad

    start = seeded_noise(images.shape[1:], seeds).to(device=images.device, dtype=images.dtype)
    if optimizer == "lbfgs":
        # L-BFGS runs on each image's loss divided by its loss at the start (a constant per image:
        # the same minimiser and iterates up to scale, 1 at the start): torch's absolute thresholds
        # (s'y > 1e-10, the first step min(1, 1 / |g|_1)) then mean the same for every network,
        # whatever the scale of its activations (the released code multiplies its loss by 1e9 for
        # the same reason, tuned to its normalised VGG-19)
        with torch.no_grad():
            unit = losses(start).detach()
        unit = torch.where(unit > 0, unit, torch.ones_like(unit))
        shape = (-1,) + (1,) * (start.ndim - 1)

        def relative(pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            loss, grad = closure(pixels)
            return loss / unit, grad / unit.view(shape)

        result = batched_lbfgs(relative, start, iterations=iterations, history=history,
                               lr=LBFGS_LR if lr is None else lr, bounds=(0.0, 1.0))
        unit = unit.to(torch.float64)
        return TextureResult(images=result.x.detach(), loss=result.loss * unit,
                             initial_loss=result.initial_loss * unit, iterations=result.iterations)

    # Adam on logits: the sigmoid keeps the pixels in (0, 1); the start is clipped away from 0 and 1
    logits = torch.logit(start.clamp(0.05, 0.95)).requires_grad_(True)
    adam = torch.optim.Adam([logits], lr=ADAM_LR if lr is None else lr)
    with torch.no_grad():
        initial_loss = losses(torch.sigmoid(logits)).to(torch.float64)
    with torch.enable_grad():
        for _ in range(iterations):
            adam.zero_grad()
            losses(torch.sigmoid(logits)).sum().backward()
            adam.step()
    textures = torch.sigmoid(logits).detach()
    with torch.no_grad():
        loss = losses(textures).to(torch.float64)
    return TextureResult(images=textures, loss=loss, initial_loss=initial_loss,
                         iterations=torch.full((batch,), iterations, dtype=torch.long, device=images.device))


def converged(result: TextureResult, ratio: float = CONVERGED_RATIO) -> torch.Tensor:
    """Per image, True when the texture's Gatys loss fell to ``ratio`` times its starting loss or
    below ([B] bool; default :data:`CONVERGED_RATIO`, our choice)."""
    return result.loss <= ratio * result.initial_loss
