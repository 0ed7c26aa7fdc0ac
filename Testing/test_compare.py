"""Method comparison report: files exist, tables hold every method and metric, images decode."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk

from MedFusionLib.cli import build_parser, main
from MedFusionLib.commands.compare import pair_spec
from MedFusionLib.errors import InvalidInputError, UnknownOptionError
from MedFusionLib.methods import get_method
from MedFusionLib.metrics import ALL_KEYS, REVIEW_KEYS
from MedFusionLib.report import PairInput, resolve_methods, run_comparison, write_report

METHODS = ["average", "maximum", "pca"]


def _pair(rng, shape=(64, 64)):
    """A T1-like and a PD-like 8-bit slice of one disc phantom (no misalignment)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    disc = (yy - shape[0] / 2) ** 2 + (xx - shape[1] / 2) ** 2 < (0.4 * min(shape)) ** 2
    inner = (yy - shape[0] / 2) ** 2 + (xx - shape[1] / 2) ** 2 < (0.2 * min(shape)) ** 2
    noise = rng.random(shape) * 20
    a = np.where(disc, 120 + noise, 0) + np.where(inner, 100, 0)
    b = np.where(disc, 200 + noise, 0) - np.where(inner, 150, 0)
    return (np.clip(a, 0, 255).astype(np.uint8), np.clip(b, 0, 255).astype(np.uint8))


def _image(array):
    return sitk.GetImageFromArray(array)


def _decode(path):
    img = sitk.ReadImage(str(path))
    arr = sitk.GetArrayFromImage(img)
    assert arr.size > 100 and arr.max() > arr.min()
    return arr


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    """One report on two 2D pairs with three methods and every metric (built once)."""
    rng = np.random.default_rng(0)
    pairs = []
    for i in range(2):
        a, b = _pair(rng)
        pairs.append(PairInput(name=f"case {i}", fixed=_image(a), moving=_image(b),
                               fixed_name=f"a{i}.png", moving_name=f"b{i}.png"))
    result = run_comparison(pairs, methods=METHODS)
    out = tmp_path_factory.mktemp("report") / "cmp"
    files = write_report(result, out, title="test report")
    return out, files, result


def test_report_files_exist_and_images_decode(report_dir):
    out, files, _ = report_dir
    for name in ("table2.csv", "table2.md", "table3.csv", "table3.md", "standard.csv",
                 "standard.md", "per_pair.csv", "report.html", "results.json",
                 "spider_table2.png", "spider_table3.png", "spider_standard.png",
                 "montage_case_0.png", "zoom_case_0.png", "montage_case_1.png", "zoom_case_1.png"):
        assert (out / name).is_file(), name
        assert files[name] == out / name
    for png in out.rglob("*.png"):
        _decode(png)
    assert sorted(p.stem for p in (out / "boxplots").glob("*.png")) == sorted(ALL_KEYS)
    assert not list(out.glob(".medfusion-*"))  # no temporary files left behind


def test_contribution_overlay_for_methods_with_a_weight_map(report_dir):
    out, files, result = report_dir
    with_weights = [m for m in result.methods if get_method(m).provides_weights]
    assert with_weights, "the report fixture should include a method with a contribution map"
    for i, pair in enumerate(result.pairs):
        assert sorted(pair.contributions) == sorted(with_weights)
        assert all(v.shape[-1] == 3 for v in pair.contributions.values())
        assert files[f"contribution_case_{i}.png"].is_file()
        _decode(files[f"contribution_case_{i}.png"])
    assert "contribution_case_0.png" in (out / "report.html").read_text()


def test_tables_hold_every_method_and_metric(report_dir):
    out, _, result = report_dir
    seen_keys = set()
    for stem in ("table2", "table3", "standard"):
        with open(out / f"{stem}.csv", newline="") as fh:
            rows = list(csv.reader(fh))
        header, body, best = rows[0], rows[1:-1], rows[-1]
        assert header[0] == "method" and best[0] == "best"
        assert [r[0] for r in body] == METHODS
        for r in body:
            assert all(np.isfinite(float(v)) for v in r[1:]), r
        assert all(b in METHODS for b in best[1:])
        seen_keys.update(header[1:])
        md = (out / f"{stem}.md").read_text()
        for m in METHODS:
            assert f"| {m} |" in md
        assert md.count("**") >= 2 * (len(header) - 1) + 2  # caption + one bold per column
    assert seen_keys == set(ALL_KEYS)
    assert open(out / "table2.csv").readline().strip() == "method,SCD,FS,FMI_pixel,FF"
    assert open(out / "table3.csv").readline().strip() == "method,SD,M,EN,FI"
    md3 = (out / "table3.md").read_text()
    assert "| E ↑ |" in md3 and "FI →1" in md3

    with open(out / "per_pair.csv", newline="") as fh:
        long = list(csv.DictReader(fh))
    assert len(long) == 2 * len(METHODS) * len(ALL_KEYS)
    data = json.loads((out / "results.json").read_text())
    assert data["methods"] == METHODS and set(data["mean"]["average"]) == set(ALL_KEYS)
    # the table is the mean over the pairs
    mean_scd = np.mean([float(r["value"]) for r in long
                        if r["method"] == "pca" and r["metric"] == "SCD"])
    assert result.mean_table()["pca"]["SCD"] == pytest.approx(mean_scd)


def test_best_marks_follow_direction(report_dir):
    out, _, result = report_dir
    table = result.mean_table()
    with open(out / "table2.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    best = dict(zip(rows[0][1:], rows[-1][1:]))
    assert best["FS"] == min(METHODS, key=lambda m: table[m]["FS"])  # lower is better
    assert best["SCD"] == max(METHODS, key=lambda m: table[m]["SCD"])


def test_html_shows_everything(report_dir):
    out, files, _ = report_dir
    page = (out / "report.html").read_text()
    for name, path in files.items():
        if name.endswith(".png"):
            assert f"src='{name}'" in page, name
    for m in METHODS:
        assert f"<th>{m}</th>" in page
    assert "cannot be reproduced" in page and "class='best'" in page


def test_compare_command_single_pair_and_manifest(tmp_path, rng, capsys):
    paths = []
    for i in range(2):
        a, b = _pair(rng, (48, 56))
        pa, pb = tmp_path / f"t1_{i}.png", tmp_path / f"pd_{i}.png"
        sitk.WriteImage(_image(a), str(pa))
        sitk.WriteImage(_image(b), str(pb))
        paths.append((pa, pb))
    out = tmp_path / "one"
    assert main(["compare", str(paths[0][0]), str(paths[0][1]), "--out", str(out),
                 "--methods", "average,maximum", "--metrics", "review", "--quiet"]) == 0
    assert (out / "report.html").is_file() and (out / "montage_t1_0.png").is_file()
    assert not (out / "standard.csv").exists()  # only the review's metrics were asked for

    manifest = tmp_path / "pairs.csv"
    manifest.write_text("fixed,moving,name\n" + "".join(
        f"{a.name},{b.name},p{i}\n" for i, (a, b) in enumerate(paths)))
    out2 = tmp_path / "many"
    assert main(["compare", "--manifest", str(manifest), "--out", str(out2), "--methods", "average",
                 "--metrics", "SCD,EN,Qabf", "--quiet"]) == 0
    data = json.loads((out2 / "results.json").read_text())
    assert [p["name"] for p in data["pairs"]] == ["p0", "p1"]
    assert data["keys"] == ["SCD", "EN", "Qabf"]


def test_compare_command_bad_input_exits_2(tmp_path, rng, capsys):
    a, b = _pair(rng)
    pa, pb = tmp_path / "a.png", tmp_path / "b.png"
    sitk.WriteImage(_image(a), str(pa))
    sitk.WriteImage(_image(b), str(pb))
    out = str(tmp_path / "o")
    assert main(["compare", str(pa), str(pb), "--out", out, "--methods", "averag"]) == 2
    assert "Did you mean 'average'" in capsys.readouterr().err
    assert main(["compare", str(pa), "--out", out]) == 2
    assert "FIXED and MOVING" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("fixed,output\na.png,x.png\n")
    assert main(["compare", "--manifest", str(bad), "--out", out]) == 2
    assert "missing: moving" in capsys.readouterr().err
    assert main(["compare", str(pa), str(pb), "--out", str(tmp_path / "no" / "dir")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_volumes_score_a_limited_number_of_slices(rng):
    a2, b2 = _pair(rng, (40, 40))
    a = np.repeat(a2[None], 12, axis=0).astype(np.float32)
    b = np.repeat(b2[None], 12, axis=0).astype(np.float32)
    a[:2] = 0  # black slices are skipped
    pair = PairInput(name="vol", fixed=_image(a), moving=_image(b), fixed_modality="MR",
                     moving_modality="MR")
    result = run_comparison([pair], methods=["average"], keys=REVIEW_KEYS, registration="none",
                            max_slices=4)
    used, total = result.pairs[0].slices["average"]
    assert total == 4 and used == 3  # slices 0, 3, 6, 9; 0 is black
    assert result.pairs[0].display["average"].shape == (40, 40)


def test_api_validation():
    assert resolve_methods("all") and "average" in resolve_methods(None)
    assert resolve_methods("pca, average") == ["pca", "average"]
    with pytest.raises(UnknownOptionError):
        resolve_methods("nope")
    with pytest.raises(InvalidInputError, match="no source pair"):
        run_comparison([], methods=["average"])


def test_compare_reads_and_registers_each_pair_as_the_pair_job_does(itk_data, tmp_path, capsys):
    """compare's pairs go through the pair job's first half (job.align_spec): a per-row initial
    transform is applied as fuse applies it, the aligned pair is the one fuse fuses (the
    'average' result equals fuse's output), and a row's missing mask is a one-line input error
    naming the file, before any report is written."""
    fixed = itk_data / "BrainT1Slice.png"
    moving = itk_data / "BrainProtonDensitySliceShifted13x17y.png"
    given = sitk.Euler2DTransform((90.0, 108.0), 0.05, (13.0, 17.0))
    sitk.WriteTransform(given, str(tmp_path / "in.tfm"))
    fused = tmp_path / "fused.mha"
    assert main(["fuse", str(fixed), str(moving), "-o", str(fused), "--method", "average",
                 "--register", "none", "--initial-transform", str(tmp_path / "in.tfm"),
                 "--quiet"]) == 0
    (tmp_path / "pairs.csv").write_text(
        "fixed,moving,name,initial_transform\n"
        f"{fixed},{moving},given,in.tfm\n"
        f"{fixed},{moving},plain,\n")
    out = tmp_path / "cmp"
    assert main(["compare", "--manifest", str(tmp_path / "pairs.csv"), "--out", str(out),
                 "--methods", "average", "--metrics", "SCD", "--register", "none",
                 "--quiet"]) == 0
    pairs = {p["name"]: p for p in json.loads((out / "results.json").read_text())["pairs"]}
    reg = pairs["given"]["settings"]["registration"]
    np.testing.assert_allclose(reg["transform_parameters"], given.GetParameters(), atol=1e-9)
    assert np.allclose(pairs["plain"]["settings"]["registration"]["transform_parameters"], 0.0)

    # the same aligned pair as fuse: the same 'average' fusion, value for value
    args = build_parser().parse_args(["compare", str(fixed), str(moving), "--out", str(out),
                                      "--register", "none", "--initial-transform",
                                      str(tmp_path / "in.tfm")])
    spec = pair_spec(args, {"fixed": str(fixed), "moving": str(moving)})
    result = run_comparison([PairInput("p", spec=spec)], methods=["average"], keys=["SCD"])
    np.testing.assert_array_equal(result.pairs[0].display["average"],
                                  sitk.GetArrayFromImage(sitk.ReadImage(str(fused))))

    (tmp_path / "bad.csv").write_text(
        "fixed,moving,fixed_mask\n"
        f"{fixed},{moving},no-such-mask.nii.gz\n")
    capsys.readouterr()
    assert main(["compare", "--manifest", str(tmp_path / "bad.csv"), "--out",
                 str(tmp_path / "cmp2"), "--methods", "average", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no-such-mask.nii.gz" in err[0]
    assert not (tmp_path / "cmp2").exists()
