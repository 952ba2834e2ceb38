"""The CIFAR ResNet family: shapes, parameter counts, and real skipping against masking."""

from __future__ import annotations

import copy

import pytest
import torch

from skipenv.models.gating import FixedGate
from skipenv.models.resnet import DEPTHS, SkipResNet, build_resnet

# He et al. 2016, Table 6 (CIFAR-10), in millions of parameters. Their counts use identity
# shortcuts with zero padding; our 1x1 projections add about 3k parameters.
PAPER_PARAMS = {20: 0.27, 32: 0.46, 44: 0.66, 56: 0.85, 110: 1.7}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(("depth", "millions"), sorted(PAPER_PARAMS.items()))
def test_parameter_counts_match_he_et_al(depth: int, millions: float) -> None:
    assert n_params(build_resnet(depth)) == pytest.approx(millions * 1e6, rel=0.03)


@pytest.mark.parametrize("depth", sorted(DEPTHS))
def test_structure_of_every_depth(depth: int) -> None:
    model = build_resnet(depth)
    n = (depth - 2) // 6
    assert model.depth == depth
    assert model.num_blocks == 3 * n
    assert model.num_decisions == 3 * n - 1
    assert model.block_channels == (16,) * n + (32,) * n + (64,) * n
    projecting = [i for i, b in enumerate(model.blocks) if b.projects]
    assert projecting == [n, 2 * n]  # first block of stages 2 and 3


def test_unknown_depth_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"unsupported depth 37.*38"):
        build_resnet(37)


def test_forward_shape_and_bad_inputs(tiny_model: SkipResNet) -> None:
    x = torch.randn(5, 3, 32, 32)
    assert tiny_model(x).shape == (5, 10)
    with pytest.raises(ValueError, match="expected images"):
        tiny_model(torch.randn(5, 1, 32, 32))
    with pytest.raises(TypeError, match="normalize"):
        tiny_model(torch.zeros(5, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"execute must be B x K = 5 x 5"):
        tiny_model.forward_skip(x, torch.ones(5, 6, dtype=torch.bool))


@pytest.mark.parametrize("channels_last", [False, True])
def test_real_skipping_equals_masked_formulation(channels_last: bool) -> None:
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = build_resnet(14, widths=(4, 8, 16)).to(memory_format=fmt)
    model.train()  # populate non-trivial batch-norm statistics
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 3, 32, 32))
    model.eval()
    x = torch.randn(12, 3, 32, 32).to(memory_format=fmt)
    execute = torch.rand(12, model.num_decisions) > 0.5  # B x K
    execute[0] = True  # one image runs everything,
    execute[1] = False  # one skips everything,
    execute[1:, model.blocks_per_stage - 1] = False  # and all others skip a projecting block
    with torch.no_grad():
        masked = model.forward_masked(x, execute.float())
        skipped = model.forward_skip(x, execute)
        full = model(x)
    torch.testing.assert_close(skipped, masked, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(skipped[2:], full[2:], atol=1e-4)  # skipping changed something
    torch.testing.assert_close(skipped[0], full[0], rtol=1e-5, atol=1e-5)


def test_skipped_block_is_never_computed(tiny_model: SkipResNet) -> None:
    seen: dict[int, int] = {}
    for i, block in enumerate(tiny_model.blocks):
        block.conv1.register_forward_hook(
            lambda mod, inp, out, i=i: seen.__setitem__(i, seen.get(i, 0) + inp[0].shape[0])
        )
    execute = torch.tensor([[True, False, True, False, False], [False] * 5, [True] * 5])
    with torch.no_grad():
        tiny_model.eval().forward_skip(torch.randn(3, 3, 32, 32), execute)
    runs = execute.sum(0).tolist()  # images executing each block 1..5
    assert seen == {0: 3} | {k + 1: r for k, r in enumerate(runs) if r > 0}


def test_skipping_with_autograd_matches_masked_gradients(tiny_model: SkipResNet) -> None:
    tiny_model.eval()
    x = torch.randn(6, 3, 32, 32)
    execute = torch.rand(6, tiny_model.num_decisions, generator=torch.Generator().manual_seed(1))
    execute = execute > 0.5
    grads = []
    for fn in (
        lambda: tiny_model.forward_skip(x, execute),
        lambda: tiny_model.forward_masked(x, execute.float()),
    ):
        tiny_model.zero_grad()
        fn().logsumexp(dim=1).sum().backward()
        grads.append(
            [
                p.grad.clone() if p.grad is not None else torch.zeros_like(p)
                for p in tiny_model.parameters()
            ]
        )
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True])
def test_skipping_input_gradients_match_masked(tiny_model: SkipResNet, channels_last: bool) -> None:
    # the routed gathers and scatters have their own backward (_SplitRows, _MergeRows)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = tiny_model.eval().to(memory_format=fmt)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(7, 3, 32, 32, generator=gen).to(memory_format=fmt)
    execute = torch.rand(7, model.num_decisions, generator=gen) > 0.5
    execute[0] = True  # some blocks run for every image, some for none
    execute[:, 0] = False
    grads = []
    for fn in (
        lambda xi: model.forward_skip(xi, execute),
        lambda xi: model.forward_masked(xi, execute.float()),
    ):
        xi = x.clone().requires_grad_()
        fn(xi).logsumexp(dim=1).sum().backward()
        grads.append(xi.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_step_by_step_equals_batched_gated_forward(tiny_model: SkipResNet) -> None:
    tiny_model.eval()
    x = torch.randn(7, 3, 32, 32)
    execute = torch.rand(7, tiny_model.num_decisions) > 0.4
    with torch.no_grad():
        out = tiny_model.forward_gated(x, FixedGate(execute))
        route = tiny_model.start(x)
        while not route.done:
            tiny_model.advance(route, execute[:, route.next_block - 1])
        logits = tiny_model.finish(route)
    torch.testing.assert_close(logits, out.logits)
    torch.testing.assert_close(out.logits, tiny_model.forward_skip(x, execute))
    assert torch.equal(route.executed, out.executed)
    assert torch.equal(route.macs, out.macs)
    assert torch.equal(out.executed[:, 1:], execute) and out.executed[:, 0].all()


def test_route_misuse_is_a_clear_error(tiny_model: SkipResNet) -> None:
    x = torch.randn(2, 3, 32, 32)
    route = tiny_model.start(x)
    with pytest.raises(RuntimeError, match="still undecided"):
        tiny_model.finish(route)
    with pytest.raises(ValueError, match="one decision per image"):
        tiny_model.advance(route, torch.ones(3, dtype=torch.bool))
    for _ in range(tiny_model.num_decisions):
        tiny_model.advance(route, torch.ones(2, dtype=torch.bool))
    with pytest.raises(RuntimeError, match="call finish"):
        tiny_model.advance(route, torch.ones(2, dtype=torch.bool))
    assert tiny_model.finish(route).shape == (2, 10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
def test_cuda_skipping_matches_cpu() -> None:
    model = build_resnet(14, widths=(4, 8, 16)).eval()
    x = torch.randn(9, 3, 32, 32)
    execute = torch.rand(9, model.num_decisions) > 0.5
    with torch.no_grad():
        cpu = model.forward_skip(x, execute)
        gpu = model.cuda().forward_skip(x.cuda(), execute.cuda())
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("channels", [3, 16])
def test_put_rows_copies_the_rows_bit_for_bit(
    dtype: torch.dtype, channels_last: bool, channels: int
) -> None:
    """put_rows's 8-byte word path (and its fallback for odd row sizes) equals index_copy."""
    from skipenv.models.resnet import put_rows

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    gen = torch.Generator().manual_seed(0)
    out = torch.randn(8, channels, 5, 3, generator=gen).to(dtype).to(memory_format=fmt)
    rows = torch.randn(3, channels, 5, 3, generator=gen).to(dtype).to(memory_format=fmt)
    index = torch.tensor([6, 1, 4])
    expected = out.clone().index_copy_(0, index, rows)
    result = put_rows(out, index, rows, inplace=True)
    assert result is out and result.is_contiguous(memory_format=fmt)
    assert torch.equal(result, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("channels", [3, 16])
def test_take_rows_copies_the_rows_bit_for_bit(
    dtype: torch.dtype, channels_last: bool, channels: int
) -> None:
    """take_rows's 8-byte word path (and its fallbacks: odd row sizes, a misaligned view,
    autograd) equals index_select and keeps the memory format."""
    from skipenv.models.resnet import take_rows

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(9, channels, 5, 3, generator=gen).to(dtype).to(memory_format=fmt)
    for index in (torch.tensor([6, 1, 4]), torch.tensor([], dtype=torch.long)):
        for source in (x, x[1:]):  # x[1:]: a view whose rows may not start on 8 bytes
            rows = take_rows(source, index)
            assert torch.equal(rows, source.index_select(0, index))
            assert rows.shape == (index.numel(), *x.shape[1:])
            assert rows.is_contiguous(memory_format=fmt)
    leaf = x.float().requires_grad_()
    take_rows(leaf, torch.tensor([2, 0])).sum().backward()  # under autograd: differentiable
    assert leaf.grad[[0, 2]].eq(1).all() and leaf.grad[1].eq(0).all()


@pytest.mark.parametrize("channels_last", [False, True])
def test_skipping_block_gradients_reach_its_weights_from_a_constant_input(
    channels_last: bool,
) -> None:
    """A projection block fed an input without gradient (a frozen stem) still passes its
    weights' gradients through real skipping, equal to the masked formulation's."""
    from skipenv.models.resnet import BasicBlock

    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    block = BasicBlock(4, 8, stride=2).to(memory_format=fmt).eval()
    x = torch.randn(6, 4, 8, 8).to(memory_format=fmt)  # no gradient
    execute = torch.tensor([True, False, True, True, False, False])
    grads = []
    for out in (
        lambda: block.forward_skip(x, execute),
        lambda: block.forward_masked(x, execute.float()),
    ):
        block.zero_grad(set_to_none=True)
        out().square().sum().backward()
        grads.append([p.grad.clone() for p in block.parameters()])
    for skip, masked in zip(*grads, strict=True):
        torch.testing.assert_close(skip, masked)


def _randomise_batch_norm(model: torch.nn.Module, seed: int) -> None:
    """Running statistics and affine parameters away from their 0/1 init, so a wrong fold
    would show."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.rand(c, generator=gen) * 2 - 1)
            m.running_var.copy_(torch.rand(c, generator=gen) * 1.5 + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(c, generator=gen) - 0.5)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("forward", ["full", "skip", "masked"])
def test_folded_batch_norm_gives_the_same_outputs_and_gradients(
    tiny_model: SkipResNet, channels_last: bool, forward: str
) -> None:
    """Folding each eval-mode batch norm into its conv changes neither the outputs nor the
    gradients of any parameter (conv weights, batch-norm affine weights) or of the input."""
    from skipenv.models.resnet import batch_norm_folded

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = tiny_model.double().to(memory_format=fmt).eval()
    _randomise_batch_norm(model, 4)
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(7, 3, 32, 32, generator=gen, dtype=torch.float64).to(memory_format=fmt)
    execute = torch.rand(7, model.num_decisions, generator=gen) > 0.5
    execute[:, 0] = True  # a block every image runs, one none does
    execute[:, 1] = False
    run = {
        "full": lambda xi: model(xi),
        "skip": lambda xi: model.forward_skip(xi, execute),
        "masked": lambda xi: model.forward_masked(xi, execute.double()),
    }[forward]
    results = []
    for fold in (False, True):
        model.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_()
        with batch_norm_folded(model, fold):
            out = run(xi)  # B x 10
        assert model.fold_bn is False  # restored on leaving the block
        out.logsumexp(dim=1).sum().backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        results.append((out.detach(), xi.grad, grads))
    (out0, gx0, g0), (out1, gx1, g1) = results
    assert any("bn" in n for n in g1)  # the affine parameters are reached
    assert set(g0) == set(g1)
    torch.testing.assert_close(out1, out0)
    torch.testing.assert_close(gx1, gx0)
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], msg=name)


def test_train_mode_batch_norm_is_never_folded(tiny_model: SkipResNet) -> None:
    """Batch norm in train mode uses the batch's statistics: folding the running ones would
    be wrong, so fold_batch_norm leaves it (and its running statistics' update) alone."""
    model = tiny_model.train()
    x = torch.randn(5, 3, 32, 32)
    plain = copy.deepcopy(model)
    folded = copy.deepcopy(model).fold_batch_norm()
    torch.testing.assert_close(folded(x), plain(x))
    torch.testing.assert_close(folded.stem[1].running_mean, plain.stem[1].running_mean)
    assert not torch.equal(folded.stem[1].running_mean, model.stem[1].running_mean)


def test_folded_conv_bn_matches_torch_fusion() -> None:
    """folded_conv_bn is the formula of torch.nn.utils.fusion, kept differentiable."""
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    from skipenv.models.resnet import folded_conv_bn

    conv, bn = torch.nn.Conv2d(3, 5, 3, bias=True), torch.nn.BatchNorm2d(5).eval()
    _randomise_batch_norm(bn, 7)
    weight, bias = folded_conv_bn(conv, bn)
    ref_w, ref_b = fuse_conv_bn_weights(
        conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
    )
    torch.testing.assert_close(weight, ref_w.detach())
    torch.testing.assert_close(bias, ref_b.detach())
    assert weight.grad_fn is not None and bias.grad_fn is not None
