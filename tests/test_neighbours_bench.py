"""bench/neighbours.py's nearest-neighbour search and its summary, against torch.cdist and hand counts.

The bench itself searches 70,000 images (about a minute) and prints shares, which no test asserts; these tests
check that the chunked search finds the same neighbours as a direct distance matrix, that
leave-one-out never lets an image pick itself, and that the summary counts what it names.
"""

import subprocess
import sys

import pytest
import torch

from _bench import BENCH, load_bench

bench = load_bench("neighbours")


@pytest.mark.parametrize("chunk", [3, 1000])  # several chunks, and one
def test_nearest_finds_what_a_full_distance_matrix_finds(monkeypatch, chunk):
    monkeypatch.setattr(bench, "CHUNK", chunk)
    generator = torch.Generator().manual_seed(0)
    reference = torch.rand(40, 16, generator=generator)
    queries = torch.rand(11, 16, generator=generator)
    distances, index = bench.nearest(queries, reference)
    expected = torch.cdist(queries.double(), reference.double())  # (11, 40)
    assert torch.equal(index, expected.argmin(1))
    assert torch.allclose(distances.double(), expected.min(1).values, atol=1e-5)


@pytest.mark.parametrize("chunk", [4, 1000])
def test_leave_one_out_picks_the_twin_never_the_image_itself(monkeypatch, chunk):
    monkeypatch.setattr(bench, "CHUNK", chunk)
    images = torch.rand(10, 16, generator=torch.Generator().manual_seed(1))
    images[7] = images[2]  # a planted duplicate pair, in different chunks when chunk=4
    distances, index = bench.nearest(images, images, leave_one_out=True)
    assert index[2] == 7 and index[7] == 2
    assert bool((index != torch.arange(10)).all())
    # Compared squared: |q|^2 + |r|^2 - 2 q.r in float32 leaves a twin a few ulps of |q|^2 (about 5.6 here)
    # above 0, 9.5e-7 when the matmul sums in another order than the row sums, and the square root makes that
    # 0.001. The bench's thresholds are 1 to 3.
    expected = torch.cdist(images.double(), images.double()).fill_diagonal_(float("inf"))
    assert torch.allclose(distances.double() ** 2, expected.min(1).values ** 2, atol=1e-5)
    assert float(distances[2]) ** 2 < 1e-5 and float(distances[7]) ** 2 < 1e-5
    # without leave-one-out every image is its own nearest neighbour (the twins may pick each other)
    own, own_index = bench.nearest(images, images)
    assert float(own.max()) ** 2 < 1e-5
    assert bool((own_index[[0, 1, 3, 4, 5, 6, 8, 9]] == torch.tensor([0, 1, 3, 4, 5, 6, 8, 9])).all())


def test_split_report_counts_accuracy_and_close_shares_by_hand():
    distances = torch.tensor([0.5, 1.5, 2.5, 3.5])
    predicted = torch.tensor([0, 1, 1, 2])
    labels = torch.tensor([0, 1, 2, 2])
    report = bench.split_report("test", distances, predicted, labels)
    assert report["accuracy"] == 0.75
    assert report["median_distance"] == 1.5  # torch's median of an even count is the lower middle
    assert report["closer_than_1"] == 0.25
    assert report["closer_than_2"] == 0.5
    assert report["closer_than_3"] == 0.75


def test_flat_scales_bytes_to_unit_pixels():
    images = torch.tensor([[[[0, 255], [51, 102]]]], dtype=torch.uint8)  # (1, 1, 2, 2)
    assert torch.allclose(bench.flat(images), torch.tensor([[0.0, 1.0, 0.2, 0.4]]))


def test_a_folder_without_the_data_is_refused_in_one_paragraph(tmp_path):
    done = subprocess.run([sys.executable, str(BENCH / "neighbours.py"), "--data-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert str(tmp_path) in done.stderr and "idx" in done.stderr  # names the folder and the files it lacks
