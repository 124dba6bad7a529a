"""Command line: --plot, --method flow and the rates in the summary."""

import json

import numpy as np
import pytest

from bwfast.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def small_cov(tmp_path):
    rng = np.random.default_rng(0)
    Q = np.linalg.qr(rng.standard_normal((4, 4)))[0]
    path = tmp_path / "cov.npy"
    np.save(path, (Q * np.array([3.0, 2.0, 1.5, 1.0])) @ Q.T)
    return path


def _png_content(path):
    import matplotlib.image as mpimg

    img = mpimg.imread(path)
    return img


def test_plot_writes_a_nonblank_png(capsys, tmp_path):
    png = tmp_path / "run.png"
    code, out, err = run(capsys, "fit", "--steps", "300", "--quiet",
                         "--plot", str(png))
    assert code in (0, 3), err
    assert str(png) in out
    img = _png_content(png)
    h, w = img.shape[:2]
    assert w >= 1000 and h >= 300
    rgb = img[..., :3]
    # not blank: many distinct colours, a good share of non-white pixels
    assert np.mean(np.any(rgb < 0.9, axis=-1)) > 0.02
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 50
    # no temporary file left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.png"]


def test_plot_never_replaces_a_file(capsys, tmp_path):
    png = tmp_path / "mine.png"
    png.write_bytes(b"user data")
    code, out, err = run(capsys, "fit", "--steps", "5", "--quiet",
                         "--plot", str(png))
    assert code == 2
    assert "exists; not overwritten" in err
    assert png.read_bytes() == b"user data"
    # --force replaces a regular file, never a link
    code, out, err = run(capsys, "fit", "--steps", "5", "--quiet",
                         "--plot", str(png), "--force")
    assert code == 3, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    link = tmp_path / "link.png"
    link.symlink_to(png)
    code, _, err = run(capsys, "fit", "--steps", "5", "--quiet",
                       "--plot", str(link), "--force")
    assert code == 2 and "symbolic link" in err
    assert link.is_symlink()
    code, _, err = run(capsys, "fit", "--steps", "5", "--quiet",
                       "--plot", str(tmp_path / "x.jpg"))
    assert code == 2 and "--plot must name a .png file" in err
    code, _, err = run(capsys, "fit", "--steps", "5", "--quiet",
                       "--plot", str(tmp_path / "nodir" / "x.png"))
    assert code == 2 and "does not exist" in err


def test_flow_with_plot_and_json(capsys, tmp_path, small_cov):
    png = tmp_path / "flow.png"
    code, out, err = run(capsys, "fit", "--target", str(small_cov), "--widths",
                         "4,4,4", "--method", "flow", "--init", "margin",
                         "--plot", str(png), "--json", "--quiet")
    assert code == 0, err
    s = json.loads(out)
    assert s["method"] == "flow" and s["status"] == "converged"
    assert s["margin"] > 0
    assert s["predicted_rate"] > 0
    assert s["observed_rate"] >= s["predicted_rate"]
    assert s["rate_ratio"] >= 1.0
    assert png.stat().st_size > 10_000


def test_summary_prints_rates(capsys, small_cov):
    code, out, _ = run(capsys, "fit", "--target", str(small_cov), "--widths",
                       "4,4,4", "--init", "margin", "--record-every", "1",
                       "--quiet")
    assert code == 0
    line = next(x for x in out.splitlines() if x.startswith("rate"))
    assert "observed" in line and "predicted (flow bound)" in line
    assert "observed / predicted" in line
    code, out, _ = run(capsys, "fit", "--steps", "50", "--quiet")
    line = next(x for x in out.splitlines() if x.startswith("rate"))
    assert "no prediction: the theory's rate needs k = n" in line


def test_flow_refuses_float32(capsys):
    code, _, err = run(capsys, "fit", "--method", "flow", "--float32",
                       "--steps", "5", "--quiet")
    assert code == 2
    assert "float64" in err and "--float32" in err
