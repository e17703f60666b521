import pytest
import torch

from models import ARCHS, build_model, count_parameters, fold_batchnorm


def test_unet_matches_the_reference_size():
    model = build_model("UNet").eval()
    assert count_parameters(model) == 7_852_545
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 512, 512)).shape == (1, 1, 512, 512)


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("size", [(64, 64), (96, 160)])
def test_every_arch_runs_forward_and_backward(arch, size):
    model = build_model(arch, base_width=8)
    x = torch.randn(2, 3, *size)
    out = model(x)
    assert out.shape == (2, 1, *size)
    out.mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_deep_supervision_returns_four_heads_in_training_and_one_in_eval():
    model = build_model("NestedUNet", deep_supervision=True, base_width=4)
    heads = model(torch.randn(1, 3, 32, 48))
    assert isinstance(heads, list) and len(heads) == 4
    assert all(h.shape == (1, 1, 32, 48) for h in heads)
    model.eval()
    assert model(torch.randn(1, 3, 32, 48)).shape == (1, 1, 32, 48)


def test_unknown_arch_and_misplaced_deep_supervision_are_refused():
    with pytest.raises(ValueError, match="unknown --arch"):
        build_model("SegNet")
    with pytest.raises(ValueError, match="NestedUNet"):
        build_model("UNet", deep_supervision=True)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_folding_batchnorm_keeps_the_function_and_leaves_no_batchnorm_behind(arch):
    torch.manual_seed(0)
    model = build_model(arch, base_width=8)
    with torch.no_grad():
        for _ in range(3):                                 # running statistics far from (0, 1)
            model(torch.rand(2, 3, 64, 64) * 5 + 2)
    model.eval()
    x = torch.rand(1, 3, 64, 96) * 5 + 2
    with torch.no_grad():
        before = model(x)
        after = fold_batchnorm(model)(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)


def test_folding_batchnorm_refuses_a_model_in_training_mode():
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(build_model("UNet", base_width=8))


def view_radius(model: torch.nn.Module, size: int = 320) -> int:
    """How far from the centre pixel an input pixel still moves the centre's output (in pixels)."""
    torch.manual_seed(0)
    x = torch.rand(1, 3, size, size, requires_grad=True)
    model(x)[0, 0, size // 2, size // 2].backward()
    rows, cols = torch.nonzero(x.grad.abs().sum(1)[0]).T
    return int(max((rows - size // 2).abs().max(), (cols - size // 2).abs().max()))


def test_a_dilated_bottleneck_sees_further_with_the_same_weights():
    plain = build_model("UNet", base_width=4).eval()
    dilated = build_model("UNet", base_width=4, bottleneck_dilation=2).eval()
    assert count_parameters(dilated) == count_parameters(plain)
    assert view_radius(dilated) >= view_radius(plain) + 32    # 2 convs x 1 more cell x 16 px per cell
    with pytest.raises(ValueError, match="--bottleneck-dilation 2 needs --arch UNet"):
        build_model("AttentionUNet", base_width=4, bottleneck_dilation=2)


def test_a_fifth_pooling_level_doubles_the_input_multiple_and_keeps_the_photos_grid():
    import inference
    from engine import make_engine
    model = build_model("UNet", base_width=4, depth=5).eval()
    assert model.input_multiple == 32 and len(model.enc) == 6
    assert build_model("UNet", base_width=4).input_multiple == 16
    x = torch.rand(1, 3, 100, 140)
    prob = inference.predict_probability(model, x, make_engine("cpu", "fp32", False), tile=64, overlap=32)
    assert prob.shape == (1, 1, 100, 140)
    with pytest.raises(ValueError, match="needs --arch UNet"):
        build_model("NestedUNet", base_width=4, depth=5)
