"""Online methods: key frames are the teacher bit for bit; state is per video; baselines."""

import pytest
import torch

from fastv2v import UserError
from fastv2v.generators import ResnetGenerator
from fastv2v.methods.base import METHODS, Repeat, Reuse, Teacher

from conftest import assert_videos_do_not_mix, run_online



@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return ResnetGenerator(ngf=4, n_blocks=2).eval()


def frames(n, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 3, 16, 16, generator=g) for _ in range(n)]


@pytest.mark.parametrize("name", ["repeat", "reuse"])
def test_key_frames_equal_teacher_bit_for_bit(teacher, name):
    method = METHODS[name](teacher, interval=3)
    with torch.no_grad():
        results = list(run_online(method, frames(7, 1)))
        for i, (x, (y, key)) in enumerate(zip(frames(7, 1), results)):
            assert key == (i % 3 == 0)
            if key:
                assert torch.equal(y, teacher(x))


def test_repeat_repeats_and_reuse_equals_it_for_tail_only_generators(teacher):
    with torch.no_grad():
        rep = [y for y, _ in run_online(Repeat(teacher, 3), frames(3, 2))]
        reu = [y for y, _ in run_online(Reuse(teacher, 3), frames(3, 2))]
    assert torch.equal(rep[1], rep[0]) and torch.equal(rep[2], rep[0])
    # The ResNet tail sees only the body output, so the reference body through the tail is the
    # reference output exactly: "reuse" is "repeat" for these generators (see docs).
    assert all(torch.equal(a, b) for a, b in zip(rep, reu))


def test_two_interleaved_videos_do_not_mix(teacher):
    assert_videos_do_not_mix(Repeat(teacher, interval=2), frames(4, 3), frames(4, 4))


def test_teacher_method_is_every_frame(teacher):
    with torch.no_grad():
        assert all(key for _, key in run_online(Teacher(teacher), frames(3, 5)))


@pytest.mark.parametrize("bad", [0, -1, 2.5])
def test_interval_must_be_positive_integer(bad):
    with pytest.raises(UserError, match="interval"):
        Repeat.from_model(ResnetGenerator(ngf=4, n_blocks=1), interval=bad)
