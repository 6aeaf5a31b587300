"""The launch-shape rule (imp_kernels.launch.block_warps): a pure function of the grid, the work per
block and the kernel's registers, pinned at the shapes it was measured on."""

from imp_kernels.launch import block_warps, compiled_regs


def test_plain_rule_without_register_count():
    # ~24 warps per SM over 132 SMs, a power of two, capped by the work and the cap
    assert block_warps(192, 80, 16) == 16
    assert block_warps(2048, 80, 16) == 2
    assert block_warps(64, 3, 16) == 3
    assert block_warps(10, 80, 8) == 8


def test_fewer_warps_when_that_fits_the_grid_in_fewer_waves():
    # 90 registers: 21 warps an SM, so 16-warp blocks sit one per SM
    assert block_warps(192, 80, 16, 90) == 8  # NVFP4 6144x5120: two waves of 132 -> one of 264
    assert block_warps(256, 32, 16, 90) == 8  # NVFP4 8192x2048
    assert block_warps(288, 32, 16, 92) == 4  # Qwen3.6 MoE gate/up: 3 waves at 16, 2 at 8, 1 at 4
    assert block_warps(64, 64, 16, 90) == 16  # 64 blocks fit at 16 warps: unchanged
    assert block_warps(128, 72, 16, 95) == 16  # Qwen3.6 MoE down: one wave already
    assert block_warps(2048, 80, 16, 90) == 2  # large grids keep the plain rule's choice
    assert block_warps(300, 11, 16, 128) == 5  # a count the work capped (11) halves once, to 5, not below 4
    # never below 4 warps by this rule, and never more than the plain rule gives
    for blocks in (100, 300, 1000, 5000):
        for regs in (32, 64, 96, 128, 255):
            w = block_warps(blocks, 64, 16, regs)
            assert w <= block_warps(blocks, 64, 16) and (w >= 4 or w == block_warps(blocks, 64, 16))


def test_compiled_regs_is_none_without_compiled_code():
    class NoCode:
        overloads: dict = {}

    assert compiled_regs(NoCode()) is None
