"""The benchmark command runs end to end (tiny sizes) and prints its tables; it measures, it asserts no speed."""
import re
import sys

from diffusion_lessons import bench


def test_quick_bench_prints_every_table(tmp_path, capsys):
    out = tmp_path / "bench.md"
    code = bench.main(["--quick", "--device", "cpu", "--only", "train", "samplers", "memory", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    for title in ("Training throughput", "Sampler accuracy per NFE", "UNet training step", "total wall time"):
        assert title in printed, title
    assert re.search(r"\| TimeMLP\(2\), moons \| 256 \| \d+ \| [\d,]+ \| [\d,]+ \| [\d.]+x \|", printed)
    assert re.search(r"\| dpm\+\+2m \| log_snr \| \d\.\d\de-\d\d \|", printed)  # errors of a method on a grid
    assert "Reaching 100-step Euler" in printed and "Teleport start" in printed
    assert re.search(r"\| euler \| (power p|karras rho) = [\d.]+ \| \d\.\d\de-\d\d \|", printed)  # the tuned grids
    written = out.read_text()
    assert written.startswith("## diffusion-lessons bench") and "device: CPU" in written
    assert "--quick" in written  # the command line is recorded


def test_book_without_nbclient_says_so(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "nbclient", None)  # `import nbclient` raises ImportError, as on the GPU machine
    assert bench.main(["--device", "cpu", "--only", "book"]) == 0
    assert "skipped: nbclient is not installed" in capsys.readouterr().out


def test_chapters_follow_the_toc():
    listed = bench.chapters()
    assert listed and all(p.suffix == ".ipynb" and p.exists() for p in listed)
    assert listed[0].stem == "01_forward_process"


def test_unknown_benchmark_names_the_valid_ones(capsys):
    assert bench.main(["--only", "speed"]) == 2
    assert re.search("'speed'.*train, samplers, memory, book", capsys.readouterr().err)
