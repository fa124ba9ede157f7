"""The key queue: ring-buffer arithmetic, checkpoint state, and metadata of the KEY images."""

import pytest
import torch

from medaug.errors import MedaugError
from medaug.moco.model import MoCo
from medaug.moco.queue import VIEW_CODES, KeyQueue, view_codes


def _batch(start, b, dim=4):
    keys = torch.nn.functional.normalize(torch.randn(b, dim), dim=1)
    ids = torch.arange(start, start + b)
    return keys, (ids % 3).to(torch.int8), ids * 10, ids * 100, ids


def test_initial_state():
    queue = KeyQueue(16, 4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(queue.keys.norm(dim=1), torch.ones(16))
    assert (queue.view == -1).all() and queue.view.dtype == torch.int8
    assert (queue.patient == -1).all() and (queue.image == -1).all()
    assert int(queue.ptr) == 0 and queue.n_filled == 0


def test_ring_buffer_overwrites_the_oldest_slots():
    queue = KeyQueue(8, 4)
    batches = [_batch(4 * i, 4) for i in range(3)]
    for i, b in enumerate(batches):
        queue.enqueue(*b)
        assert int(queue.ptr) == (4 * (i + 1)) % 8
    # Slots 0-3 hold the third batch, 4-7 the second.
    torch.testing.assert_close(queue.keys[:4], batches[2][0])
    torch.testing.assert_close(queue.keys[4:], batches[1][0])
    assert queue.image.tolist() == [8, 9, 10, 11, 4, 5, 6, 7]
    assert queue.patient.tolist() == [80, 90, 100, 110, 40, 50, 60, 70]
    assert queue.study.tolist() == [800, 900, 1000, 1100, 400, 500, 600, 700]
    assert queue.view.tolist() == [2, 0, 1, 2, 1, 2, 0, 1]
    assert queue.n_filled == 8


def test_batch_must_divide_the_queue():
    queue = KeyQueue(10, 4)
    with pytest.raises(MedaugError, match="not divisible by the global batch 4"):
        queue.enqueue(*_batch(0, 4))


def test_bad_view_codes_are_rejected():
    queue = KeyQueue(8, 4)
    keys, _, patient, study, image = _batch(0, 4)
    with pytest.raises(ValueError, match="view codes"):
        queue.enqueue(keys, torch.tensor([0, 1, -1, 0]), patient, study, image)


def test_state_dict_round_trip_carries_keys_metadata_and_pointer():
    queue = KeyQueue(8, 4)
    queue.enqueue(*_batch(0, 4))
    restored = KeyQueue(8, 4)
    restored.load_state_dict(queue.state_dict())
    for name in ("keys", "view", "patient", "study", "image", "ptr"):
        assert torch.equal(getattr(restored, name), getattr(queue, name)), name
    assert set(queue.state_dict()) == {"keys", "view", "patient", "study", "image", "group", "ptr"}


def test_group_defaults_to_the_laterality_and_takes_any_codes():
    queue = KeyQueue(8, 4)
    assert (queue.group == -1).all()
    keys, view, patient, study, image = _batch(0, 4)
    queue.enqueue(keys, view, patient, study, image)
    assert queue.group[:4].tolist() == view.tolist()  # by default, the laterality
    sex = torch.tensor([1, 0, 2, 1])  # e.g. Female, Male, missing, Female
    queue.enqueue(*_batch(4, 4), sex)
    assert queue.group.tolist() == view.tolist() + [1, 0, 2, 1]
    assert queue.view[4:].tolist() == _batch(4, 4)[1].tolist()  # laterality kept beside it
    with pytest.raises(ValueError, match="group codes must be >= 0"):
        queue.enqueue(*_batch(0, 4), torch.tensor([0, -1, 0, 0]))


def test_a_queue_saved_without_groups_groups_by_laterality():
    queue = KeyQueue(8, 4)
    queue.enqueue(*_batch(0, 4))
    state = {k: v for k, v in queue.state_dict().items() if k != "group"}
    restored = KeyQueue(8, 4)
    restored.load_state_dict(state)
    assert restored.group.tolist() == queue.view.tolist()
    assert restored.group.dtype == torch.int64


def test_view_codes_follow_the_schema():
    assert VIEW_CODES == {"frontal": 0, "lateral": 1, "other": 2}
    assert view_codes(["lateral", "frontal", "other"]).tolist() == [1, 0, 2]
    with pytest.raises(MedaugError, match="valid: frontal, lateral, other"):
        view_codes(["Frontal"])


def test_queue_metadata_belongs_to_the_key_images():
    """Anchors are frontal, their partners lateral: every stored key must sit beside the
    metadata of the image it was computed from (the partner), never the anchor's."""
    torch.manual_seed(0)
    model = MoCo("resnet18", hidden=32, dim=16, bn_groups=2).eval()
    n_pairs = 8
    images = torch.randn(2 * n_pairs, 3, 32, 32)  # rows 0-7 anchors, 8-15 partners
    view = torch.tensor([0] * n_pairs + [1] * n_pairs)
    patient = torch.arange(2 * n_pairs) % n_pairs + 100  # pair i shares patient 100 + i
    study = torch.arange(2 * n_pairs) + 1000  # every image its own study
    queue = KeyQueue(8, 16)
    for start in (0, 4, 8):  # three batches of four pairs: the third wraps around
        anchor = torch.arange(start, start + 4) % n_pairs
        partner = anchor + n_pairs
        k = model.key(images[partner])
        queue.enqueue(k, view[partner], patient[partner], study[partner], partner)
    # Identify each stored key by brute force against every image's own key.
    with torch.no_grad():
        own = torch.cat([model.key(images[i : i + 1]) for i in range(2 * n_pairs)])
    for slot in range(8):
        best = int((own @ queue.keys[slot]).argmax())
        assert best == int(queue.image[slot])
        assert int(queue.view[slot]) == int(view[best]) == VIEW_CODES["lateral"]
        assert int(queue.patient[slot]) == int(patient[best])
        assert int(queue.study[slot]) == int(study[best])
