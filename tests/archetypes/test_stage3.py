"""`featgeo aanet select` and `featgeo aanet stage3` on a tiny Stage 1 run (random Llama, random
TopK SAE): the seed's file set in both modes, vertex records checked against an independent
recomputation from the held-out activation store, resume after an interruption, reuse, --force,
--selection and every bad input."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from featgeo.cli import app
from featgeo.files import read_json
from featgeo.sae import SAEConfig, SparseAutoencoder, save_sae

runner = CliRunner()

THRESHOLD = 0.78  # random tiny AANets: most tokens sit near the simplex centre (0.816 away)
QUOTA = 4
STORE_TOKENS = 2500  # the vertex split's store: a little more than two documents
CONTEXT = 64
# Selection relaxed so that random Stage 1 curves select clusters, plus one manual cluster.
SELECT = ["--n-clusters-list", "4,6", "--no-require-monotonic", "--min-pct-decrease", "0",
          "--max-k-differential", "10", "--sigma-a", "0", "--sigma-bc", "0", "--manual", "6:1",
          "--refit-k", "recon"]  # fmt: skip
VERTEX = ["--store-tokens", str(STORE_TOKENS), "--samples-per-vertex", str(QUOTA),
          "--vertex-threshold", str(THRESHOLD)]  # fmt: skip
RUN = ["--device", "cpu", "--workers", "1", "--models-per-unit", "6"]
SUFFIXES = (".pt", "_vertex_samples.jsonl", "_vertex_stats.json", "_metadata.json",
            "_curves.json")  # fmt: skip


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def env(stage_env):
    return stage_env


@pytest.fixture(autouse=True)
def _cache(env, monkeypatch):
    monkeypatch.setenv("FEATGEO_CACHE", str(env["root"] / "cache"))


@pytest.fixture(scope="module")
def stage1(env) -> Path:
    """Stage 1 on the training split (test_stage1's tiny settings), once."""
    out = env["root"] / "stage1"
    args = ["aanet", "stage1", "--sae", str(env["sae"]), "--n-clusters", "4,6", "--save-dir",
            str(out), "--k-min", "2", "--k-max", "4", "--max-steps", "40",
            "--early-stop-patience", "20", "--loss-smoothing-window", "8", "--model",
            str(env["model"]), "--corpus", str(env["corpus"]), "--context-size", str(CONTEXT),
            "--store-tokens", "2000", "--device", "cpu", "--models-per-unit", "6",
            "--workers", "1"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return out


def s3_args(csv_dir, save_dir, *extra, select=SELECT, vertex=VERTEX) -> list[str]:
    return ["aanet", "stage3", "--csv-dir", str(csv_dir), "--save-dir", str(save_dir), *select,
            *vertex, *RUN, *extra]  # fmt: skip


def invoke_ok(args):
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def mode2(env, stage1):
    out = env["root"] / "mode2"
    return out, invoke_ok(s3_args(stage1, out, "--skip-training"))


@pytest.fixture(scope="module")
def mode1(env, stage1):
    out = env["root"] / "mode1"
    return out, invoke_ok(s3_args(stage1, out))


@pytest.fixture(params=["mode1", "mode2"])
def either(request):
    return request.getfixturevalue(request.param)[0]


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def selected(out) -> list[dict]:
    return read_csv(out / "selection.csv")


def stem(row) -> str:
    return f"cluster_{row['cluster_id']}_k{row['refit_k']}_category{row['category']}"


def output(out, row, suffix) -> Path:
    return out / f"n{row['n_clusters']}" / f"{stem(row)}{suffix}"


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def one_line_error(result, message: str) -> None:
    """Exit code 2 and one error line, the last one (a log line may come before it)."""
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    errors = [line for line in lines if line.startswith("featgeo: error:")]
    assert len(errors) == 1 and errors[0] == lines[-1], result.output
    assert message in " ".join(errors[0].split()), result.output
    assert "Traceback" not in result.output


def files(folder: Path) -> dict[Path, tuple[bytes, int]]:
    return {p.relative_to(folder): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def stage1_row(stage1, n, cid) -> dict:
    rows = read_csv(stage1 / f"clusters_{n}" / f"consolidated_metrics_n{n}.csv")
    return next(r for r in rows if r["cluster_id"] == str(cid))


# -- the files ---------------------------------------------------------------------------------
def test_both_modes_write_the_seed_file_set(mode1, mode2, stage1):
    (m1, _), (m2, _) = mode1, mode2
    for out in (m1, m2):
        assert sorted(p.name for p in out.iterdir()) == ["n4", "n6", "selection.csv",
                                                         "stage3.json"]  # fmt: skip
        rows = selected(out)
        assert {r["n_clusters"] for r in rows} == {"4", "6"}
        for n in ("4", "6"):
            expected = {f"selection_n{n}.csv"} | {
                f"{stem(r)}{s}" for r in rows if r["n_clusters"] == n for s in SUFFIXES
            }
            assert {p.name for p in (out / f"n{n}").iterdir()} == expected
            assert read_csv(out / f"n{n}" / f"selection_n{n}.csv") == [
                r for r in rows if r["n_clusters"] == n
            ]
        info = read_json(out / "stage3.json")
        assert info["status"] == "complete"
    assert selected(m1) == selected(m2)
    assert sorted(p.relative_to(m1) for p in m1.rglob("*")) == sorted(
        p.relative_to(m2) for p in m2.rglob("*")
    )
    # the manual cluster first of its n, category M, refit at its recon elbow k (--refit-k recon)
    rows = selected(m2)
    manual = next(r for r in rows if r["n_clusters"] == "6")
    assert (manual["cluster_id"], manual["category"]) == ("1", "M")
    for r in rows:
        assert (
            r["refit_k"]
            == stage1_row(stage1, r["n_clusters"], r["cluster_id"])["aanet_recon_loss_elbow_k"]
        )


def test_mode2_copies_stage1s_models_byte_for_byte(mode2, stage1):
    out, _ = mode2
    for row in selected(out):
        source = (stage1 / f"clusters_{row['n_clusters']}" /
                  f"aanet_cluster_{row['cluster_id']}_k{row['refit_k']}.pt")  # fmt: skip
        assert output(out, row, ".pt").read_bytes() == source.read_bytes()
        meta = read_json(output(out, row, "_metadata.json"))
        assert meta["mode"] == "stage1_models" and meta["training"] is None
        assert meta["fingerprints"]["stage1_model_sha256"] == sha256(source)
        assert meta["model"]["sha256"] == sha256(source) and meta["model"]["k"] == int(
            row["refit_k"]
        )
        curves = read_json(output(out, row, "_curves.json"))
        assert curves["source"] == "stage1" and curves["file"] == str(source)


def test_mode1_retrains_at_the_refit_k(mode1):
    from featgeo.archetypes import AANet

    out, output_text = mode1
    assert "refit AANets" in output_text
    for row in selected(out):
        net = AANet.load(output(out, row, ".pt"))
        assert net.k == int(row["refit_k"])
        extra = net.config_.extra
        assert (extra["n_clusters"], extra["cluster_id"], extra["category"]) == (
            int(row["n_clusters"]), int(row["cluster_id"]), row["category"])  # fmt: skip
        assert extra["latent_indices"] == [int(v) for v in row["latent_indices"].split()]
        assert 0 < net.n_steps_ <= 40  # Stage 1's settings
        meta = read_json(output(out, row, "_metadata.json"))
        assert meta["mode"] == "retrain" and meta["training"]["aanet"]["max_steps"] == 40
        assert meta["training"]["split"] == "sae_train"
        assert meta["model"]["k"] == int(row["refit_k"])
        curves = read_json(output(out, row, "_curves.json"))
        assert curves["source"] == "retrained" and curves["status"] == "ok"
        assert curves["steps"] == net.n_steps_


def test_mode1_files_do_not_depend_on_the_process_that_trained(mode1, stage1, tmp_path):
    """Two worker processes write the same bytes as this process (models, curves, samples)."""
    out = tmp_path / "two-workers"
    args = s3_args(stage1, out)
    args[args.index("--workers") + 1] = "2"
    invoke_ok(args)
    first, _ = mode1
    for row in selected(first):
        for suffix in (".pt", "_curves.json", "_vertex_samples.jsonl"):
            assert output(out, row, suffix).read_bytes() == output(first, row, suffix).read_bytes()


# -- vertex records, recomputed from the store ---------------------------------------------------
class Oracle:
    """Distances of every active token of the vertex store to every vertex, recomputed with
    ``AANet.transform`` on ``codes @ W_dec[latents]`` (the public API, not the scan's path)."""

    def __init__(self, out: Path, sae_folder: Path):
        from featgeo.activations.store import ActivationStore
        from featgeo.sae.saelens_format import load_sae

        info = read_json(out / "stage3.json")
        self.store = ActivationStore.open(info["vertex_scan"]["store"]["folder"])
        self.w_dec = load_sae(sae_folder).W_dec.detach().float().numpy()
        s = self.store
        self.doc = np.asarray(s.doc_index, dtype=np.int64)
        self.chunk = np.asarray(s.chunk_index, dtype=np.int64)
        self.position = np.asarray(s.position, dtype=np.int64)
        self.token_ids = np.asarray(s.token_ids, dtype=np.int64)
        keys = zip(self.doc.tolist(), self.chunk.tolist(), self.position.tolist(), strict=True)
        self.row_of = {key: i for i, key in enumerate(keys)}

    def distances(self, pt: Path, latents: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """(store rows of the active tokens, float64 [n, k] distances to each vertex)."""
        from featgeo.archetypes import AANet

        s = self.store
        indptr = np.asarray(s.indptr, dtype=np.int64)
        all_latents = np.asarray(s.latents, dtype=np.int64)
        values = np.asarray(s.values, dtype=np.float32)
        column = {lat: j for j, lat in enumerate(latents)}
        codes = np.zeros((s.n_tokens, len(latents)), np.float32)
        for row in range(s.n_tokens):
            for e in range(indptr[row], indptr[row + 1]):
                j = column.get(int(all_latents[e]))
                if j is not None:
                    codes[row, j] = values[e]
        rows = np.flatnonzero(np.abs(codes).sum(axis=1) > 1e-6)
        net = AANet.load(pt)
        lam = net.transform(codes[rows] @ self.w_dec[latents]).astype(np.float64)
        dist = np.linalg.norm(lam[:, None, :] - np.eye(net.k)[None], axis=2)
        return rows, dist


@pytest.fixture(scope="module")
def tokenizer(tiny_llama):
    from featgeo.models.loading import load_tokenizer

    return load_tokenizer(str(tiny_llama))


def test_vertex_records_match_an_independent_recomputation(either, env, tokenizer):
    out = either
    oracle = Oracle(out, env["sae"])
    store = oracle.store
    assert store.header["split"] == "vertex" and store.n_tokens == STORE_TOKENS
    order = np.lexsort((oracle.chunk, oracle.doc))
    assert (order == np.arange(store.n_tokens)).all()  # the store is in reading order
    for row in selected(out):
        latents = [int(v) for v in row["latent_indices"].split()]
        k = int(row["refit_k"])
        records = read_jsonl(output(out, row, "_vertex_samples.jsonl"))
        stats = read_json(output(out, row, "_vertex_stats.json"))
        rows, dist = oracle.distances(output(out, row, ".pt"), latents)
        near = dist < THRESHOLD
        by_row = {int(r): i for i, r in enumerate(rows)}
        keys = [(r["doc_index"], r["chunk_index"], r["vertex"]) for r in records]
        assert len(set(keys)) == len(keys)  # one record per (chunk, vertex)
        for record in records:
            assert (record["n_clusters"], record["cluster_id"], record["k"]) == (
                int(row["n_clusters"]), int(row["cluster_id"]), k)  # fmt: skip
            assert record["category"] == row["category"] and 0 <= record["vertex"] < k
            ids = record["token_ids"]
            assert 0 < len(ids) <= CONTEXT and record["text"] == tokenizer.decode(ids)
            doc, chunk, v = record["doc_index"], record["chunk_index"], record["vertex"]
            # the whole chunk: its stored tokens (positions 1.., all of them unless the store
            # ends inside the chunk) are the record's ids 1..
            chunk_rows = np.flatnonzero((oracle.doc == doc) & (oracle.chunk == chunk))
            stored = len(chunk_rows)
            assert 0 < stored <= len(ids) - 1 and (
                stored == len(ids) - 1 or chunk_rows[-1] == store.n_tokens - 1
            )
            assert oracle.position[chunk_rows].tolist() == list(range(1, stored + 1))
            assert oracle.token_ids[chunk_rows].tolist() == ids[1 : stored + 1]
            expected = [int(oracle.position[r]) for r in chunk_rows
                        if r in by_row and near[by_row[r], v]]  # fmt: skip
            assert [t["position"] for t in record["triggers"]] == expected  # all, in order
            for t in record["triggers"]:
                assert ids[t["position"]] == t["token_id"]
                assert t["word"] == tokenizer.decode([t["token_id"]])
                assert 0 <= t["distance"] < THRESHOLD
                store_row = oracle.row_of[(doc, chunk, t["position"])]
                assert abs(dist[by_row[store_row], v] - t["distance"]) < 1e-4
        # counts: the stats file, the quota, and the first chunks (in reading order) that hold
        # a trigger of each vertex (the CLI's scan reads the whole small store in one block)
        assert stats["split"] == "vertex" and stats["samples_per_vertex"] == QUOTA
        assert stats["store"] == Path(store.folder).name and stats["k"] == k
        assert stats["tokens_scanned"] == STORE_TOKENS
        assert stats["active_tokens"] == rows.size
        chunk_key = oracle.doc * 100_000 + oracle.chunk
        for v in range(k):
            count = sum(r["vertex"] == v for r in records)
            assert count <= QUOTA and count == stats["vertices"][v]["records"]
            assert stats["vertices"][v]["triggers"] == int(near[:, v].sum())
            chunks = list(dict.fromkeys(chunk_key[rows[near[:, v]]].tolist()))[:QUOTA]
            got = [r["doc_index"] * 100_000 + r["chunk_index"] for r in records
                   if r["vertex"] == v]  # fmt: skip
            assert got == chunks
        assert stats["quota_met"] == all(v["records"] >= QUOTA for v in stats["vertices"])
    # something was found at all (the thresholds are chosen so that it is)
    assert any(output(out, r, "_vertex_samples.jsonl").stat().st_size for r in selected(out))


def test_the_training_split_is_never_read(mode2, stage1, env, tmp_path):
    out, _ = mode2
    info = read_json(out / "stage3.json")
    store = info["vertex_scan"]["store"]
    assert store["split"] == "vertex" and info["settings"]["split"] == "vertex"
    assert store["key"] != read_json(stage1 / "stage1.json")["store"]["key"]
    for row in selected(out):
        meta = read_json(output(out, row, "_metadata.json"))
        assert meta["fingerprints"]["vertex_store"] == Path(store["folder"]).name
        assert meta["fingerprints"]["corpus"] == store["corpus_fingerprint"]
    for split in ("sae_train", "all"):
        save = tmp_path / split
        result = runner.invoke(app, s3_args(stage1, save, "--skip-training", "--split", split))
        one_line_error(result, f"--split {split}")
        assert "use --split vertex" in result.output
        assert not save.exists()


def test_max_tokens_bounds_the_scan(stage1, tmp_path):
    out = tmp_path / "budget"
    invoke_ok(s3_args(stage1, out, "--skip-training", "--max-tokens", "300"))
    scan = read_json(out / "stage3.json")["vertex_scan"]
    assert 0 < scan["tokens_scanned"] <= 300 and scan["stopped"] in ("budget", "quota")
    for row in selected(out):
        stats = read_json(output(out, row, "_vertex_stats.json"))
        assert 0 < stats["tokens_scanned"] <= 300 and stats["max_tokens"] == 300
        for record in read_jsonl(output(out, row, "_vertex_samples.jsonl")):
            assert record["doc_index"] == 0 and record["chunk_index"] < 300 // (CONTEXT - 1)


def test_vertex_skip_docs_leaves_out_the_first_documents(stage1, tmp_path):
    out = tmp_path / "skip"
    invoke_ok(s3_args(stage1, out, "--skip-training", "--vertex_skip_docs", "1"))
    records = [r for row in selected(out)
               for r in read_jsonl(output(out, row, "_vertex_samples.jsonl"))]  # fmt: skip
    assert records and min(r["doc_index"] for r in records) >= 1
    assert read_json(out / "stage3.json")["settings"]["vertex"]["skip_docs"] == 1


def test_without_vertex_samples_only_models_metadata_and_curves_are_written(stage1, tmp_path):
    out = tmp_path / "models-only"
    invoke_ok(s3_args(stage1, out, "--skip-training", "--no-collect-vertex-samples"))
    for row in selected(out):
        names = sorted(p.name for p in (out / f"n{row['n_clusters']}").glob(f"{stem(row)}*"))
        assert names == sorted(f"{stem(row)}{s}" for s in (".pt", "_curves.json",
                                                          "_metadata.json"))  # fmt: skip
    assert "vertex_scan" not in read_json(out / "stage3.json")


def test_mode1_training_options_override_stage1s(stage1, tmp_path):
    from featgeo.archetypes import AANet

    out = tmp_path / "override"
    invoke_ok(s3_args(stage1, out, "--aanet_max_steps", "7", "--lr", "0.001",
                      "--no-collect-vertex-samples"))  # fmt: skip
    for row in selected(out):
        net = AANet.load(output(out, row, ".pt"))
        assert net.n_steps_ == 7 and net.config_.lr == 0.001
        curves = read_json(output(out, row, "_curves.json"))
        assert curves["step"][-1] == 7 and curves["stop_reason"] == "max_steps"
        assert read_json(output(out, row, "_metadata.json"))["training"]["aanet"]["max_steps"] == 7


def test_the_cli_prints_trigger_words_per_vertex(mode2):
    out, text = mode2
    text = " ".join(text.split())
    shown = next(r for r in selected(out) if output(out, r, "_vertex_samples.jsonl").stat().st_size)
    assert (
        f"Trigger words per vertex of cluster {shown['cluster_id']} (n_clusters="
        f"{shown['n_clusters']}, category {shown['category']}, k={shown['refit_k']}):"
    ) in text
    counts: dict[int, Counter] = {}
    for record in read_jsonl(output(out, shown, "_vertex_samples.jsonl")):
        counter = counts.setdefault(record["vertex"], Counter())
        counter.update(t["word"].strip() or t["word"] for t in record["triggers"])
    for v in range(int(shown["refit_k"])):
        line = text.split(f"vertex {v}: ")[1].split(" vertex ")[0].split(" Outputs in")[0]
        if v not in counts:
            assert line.startswith("(none found)")
        for word, count in counts.get(v, Counter()).most_common(6):
            assert f"{word!r} ({count})" in line, (v, word, line)
    assert "Stage 3 in" in text and "records per vertex" in text


# -- resume, reuse, --force, --selection ----------------------------------------------------------
def library_config(**vertex):
    from featgeo.archetypes.quality import QualityFilters
    from featgeo.archetypes.selection import SelectionCriteria
    from featgeo.archetypes.stage3 import Stage3Config
    from featgeo.archetypes.vertices import VertexSettings

    criteria = SelectionCriteria(
        filters=QualityFilters(min_pct_decrease=0, max_k_differential=10, require_monotonic=False),
        sigma_a=0, sigma_bc=0, manual=((6, 1),), refit_k="recon")  # fmt: skip
    settings = dict(threshold=THRESHOLD, samples_per_vertex=QUOTA, block_tokens=64, **vertex)
    return Stage3Config(n_clusters=(4, 6), criteria=criteria, skip_training=True,
                        vertex=VertexSettings(**settings), store_tokens=STORE_TOKENS)  # fmt: skip


def run_library(stage1, save):
    from featgeo.archetypes.stage3 import run_stage3

    return run_stage3(stage1, save, library_config(), device="cpu", workers=1, progress=False)


@pytest.mark.parametrize("where", ["after-a-block", "before-a-checkpoint"])
def test_an_interrupted_collection_resumes_without_duplicates(stage1, tmp_path, monkeypatch,
                                                              where):  # fmt: skip
    from featgeo.archetypes import stage3 as module

    whole = run_library(stage1, tmp_path / "whole").save_dir
    whole_scan = read_json(whole / "stage3.json")["vertex_scan"]
    assert whole_scan["chunks_scanned"] > 3  # many blocks of 64 tokens (two chunks)
    real_scan, real_save = module.scan_vertices, module.save_checkpoint
    cut = tmp_path / "cut"
    if where == "after-a-block":

        def scan(*args, **kwargs):
            blocks = real_scan(*args, **kwargs)
            yield next(blocks)  # written and checkpointed; then a Ctrl-C
            raise KeyboardInterrupt

        monkeypatch.setattr(module, "scan_vertices", scan)
    else:  # records of a block appended, its checkpoint not yet saved
        saved: list[dict] = []

        def save_checkpoint(work, state, paths):
            sizes = {p.name: p.stat().st_size for p in paths}
            if saved and sizes != saved[-1]:
                raise KeyboardInterrupt
            saved.append(sizes)
            real_save(work, state, paths)

        monkeypatch.setattr(module, "save_checkpoint", save_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        run_library(stage1, cut)
    assert sorted(p.name for p in cut.iterdir()) == [".stage3.partial", "stage3.json"]
    assert read_json(cut / "stage3.json")["status"] == "running"
    partial = sorted((cut / ".stage3.partial").rglob("*_vertex_samples.jsonl"))
    assert partial and (cut / ".stage3.partial" / "collection.json").is_file()
    if where == "before-a-checkpoint":  # rows beyond the checkpoint, to be cut back
        checkpoint = read_json(cut / ".stage3.partial" / "collection.json")["bytes"]
        assert any(p.stat().st_size > checkpoint[p.name] for p in partial)
    states = []

    def resumed(*args, **kwargs):
        states.append(kwargs.get("state"))
        yield from real_scan(*args, **kwargs)

    monkeypatch.setattr(module, "scan_vertices", resumed)
    monkeypatch.setattr(module, "save_checkpoint", real_save)
    run_library(stage1, cut)
    assert states[0] is not None and states[0].next_row > 0  # continued, not started over
    assert not (cut / ".stage3.partial").exists()
    a, b = files(whole), files(cut)
    assert sorted(a) == sorted(b)
    for name in a:
        if name == Path("stage3.json"):
            x, y = read_json(whole / name), read_json(cut / name)
            x.pop("seconds"), y.pop("seconds")
            assert x == y and y["vertex_scan"] == whole_scan
        else:
            assert a[name][0] == b[name][0], name
    for path in sorted(cut.rglob("*_vertex_samples.jsonl")):
        keys = [(r["doc_index"], r["chunk_index"], r["vertex"]) for r in read_jsonl(path)]
        assert len(keys) == len(set(keys)), path.name


def test_the_same_command_is_reused_and_writes_nothing(mode2, stage1):
    out, _ = mode2
    before = files(out)
    text = invoke_ok(s3_args(stage1, out, "--skip-training"))
    assert "(reused)" in text and "Trigger words per vertex" in text
    assert files(out) == before


def test_other_settings_need_force(stage1, tmp_path):
    out = tmp_path / "run"
    invoke_ok(s3_args(stage1, out, "--skip-training"))
    before = files(out)
    other = s3_args(stage1, out, "--skip-training", "--samples-per-vertex", "2")
    one_line_error(runner.invoke(app, other), "holds a Stage 3 run with other settings "
                   "(vertex.samples_per_vertex 4 -> 2)")  # fmt: skip
    fewer = s3_args(stage1, out, "--skip-training", "--manual", "")  # 6:1 no longer selected
    one_line_error(runner.invoke(app, fewer), "selected clusters: 0 added [], 1 removed "
                   "['6:1 k=")  # fmt: skip
    assert files(out) == before
    text = invoke_ok([*other, "--force"])
    assert "(reused)" not in text
    for row in selected(out):
        stats = read_json(output(out, row, "_vertex_stats.json"))
        assert stats["samples_per_vertex"] == 2
        assert all(v["records"] <= 2 for v in stats["vertices"])
    assert read_json(out / "stage3.json")["settings"]["vertex"]["samples_per_vertex"] == 2


def test_a_selection_table_gives_the_same_outputs(mode2, stage1, tmp_path):
    out, _ = mode2
    table = tmp_path / "picked.csv"
    text = invoke_ok(["aanet", "select", "--csv-dir", str(stage1), *SELECT, "--out", str(table)])
    rows = selected(out)
    flat = " ".join(text.split())
    assert f"{len(rows)} selected clusters" in flat and f"Wrote {len(rows)} rows to" in flat
    assert "n=4: 4 clusters, 4 pass the filters" in flat
    assert "n=6: 6 clusters, 6 pass the filters" in flat
    assert table.read_bytes() == (out / "selection.csv").read_bytes()
    again = tmp_path / "from-table"
    invoke_ok(["aanet", "stage3", "--csv-dir", str(stage1), "--save-dir", str(again),
               "--n-clusters-list", "4,6", "--selection", str(table), "--skip-training", *VERTEX,
               *RUN])  # fmt: skip
    a, b = files(out), files(again)
    assert sorted(a) == sorted(b)
    for name in a:
        if name.name.endswith("_metadata.json"):  # thresholds are not in a selection table
            x, y = read_json(out / name), read_json(again / name)
            assert x.pop("selection")["criteria"]["manual"] == [[6, 1]]
            assert y.pop("selection") is None and x == y
        elif name != Path("stage3.json"):
            assert a[name][0] == b[name][0], name
    info = read_json(again / "stage3.json")
    assert info["selection"] == {"source": str(table), "sha256": sha256(table)}


# -- bad input ---------------------------------------------------------------------------------
def copy_stage1(stage1, tmp_path) -> Path:
    copy = tmp_path / "stage1-copy"
    shutil.copytree(stage1, copy)
    return copy


def manual_model(folder, stage1, k=None) -> Path:
    """Stage 1's model of the manual cluster 6:1 at its refit k (or at ``k``)."""
    refit = int(stage1_row(stage1, 6, 1)["aanet_recon_loss_elbow_k"])
    return folder / "clusters_6" / f"aanet_cluster_1_k{k or refit}.pt"


def no_elbow_columns(stage1, tmp_path):
    copy = copy_stage1(stage1, tmp_path)
    path = copy / "clusters_4" / "consolidated_metrics_n4.csv"
    rows = read_csv(path)
    columns = [c for c in rows[0] if c != "aanet_archetypal_loss_elbow_k"]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return ["--csv-dir", str(copy)], ["has no column(s) aanet_archetypal_loss_elbow_k"]


def model_not_found(stage1, tmp_path):
    copy = copy_stage1(stage1, tmp_path)
    path = manual_model(copy, stage1)
    path.unlink()
    return ["--csv-dir", str(copy), "--skip-training"], ["Model not found", str(path),
                                                         "drop --skip-training"]  # fmt: skip


def wrong_k_model(stage1, tmp_path):
    copy = copy_stage1(stage1, tmp_path)
    refit = manual_model(copy, stage1)
    other = next(k for k in (2, 3, 4) if f"_k{k}." not in refit.name)
    shutil.copyfile(manual_model(copy, stage1, other), refit)
    return ["--csv-dir", str(copy), "--skip-training"], [f"{refit} holds a k={other} model"]


def other_cluster_model(stage1, tmp_path):
    """Another cluster's model at the same k, its record of latents removed (as in files that
    predate it): the basis does not span the cluster's decoder rows."""
    copy = copy_stage1(stage1, tmp_path)
    refit = manual_model(copy, stage1)
    other = refit.with_name(refit.name.replace("aanet_cluster_1_", "aanet_cluster_2_"))
    data = torch.load(other, weights_only=True)
    data["config"]["extra"] = {}
    torch.save(data, refit)
    return ["--csv-dir", str(copy), "--skip-training"], [f"{refit} was trained on other latents"]


def no_stage1_record(stage1, tmp_path):
    copy = copy_stage1(stage1, tmp_path)
    (copy / "stage1.json").unlink()
    return ["--csv-dir", str(copy), "--skip-training"], ["has no stage1.json naming the SAE; "
                                                         "pass --sae"]  # fmt: skip


def sae_moved(stage1, tmp_path):
    copy = copy_stage1(stage1, tmp_path)
    record = read_json(copy / "stage1.json")
    record["sae"] = str(tmp_path / "moved-away")
    (copy / "stage1.json").write_text(json.dumps(record))
    return ["--csv-dir", str(copy), "--skip-training"], ["is not found from here; pass --sae"]


def other_sae(stage1, tmp_path):
    cfg = SAEConfig(d_in=64, d_sae=48, architecture="topk", k=6,
                    hook_name="blocks.1.hook_resid_post")  # fmt: skip
    folder = save_sae(SparseAutoencoder.from_config(cfg, seed=1), tmp_path / "other-sae")
    return ["--sae", str(folder)], ["is not the SAE Stage 1 trained on"]


def simple(args, *messages):
    return lambda stage1, tmp_path: (args, list(messages))


def csv_not_found(stage1, tmp_path):
    return ["--n-clusters-list", "4,5,6"], [
        "CSV not found",
        "consolidated_metrics_n5.csv",
        str(stage1 / "clusters_5"),
        str(stage1),
    ]


BAD = {
    "csv-not-found": csv_not_found,
    "model-not-found": model_not_found,
    "no-clusters-selected": lambda stage1, tmp_path: (
        ["--min-pct-decrease", "100", "--manual", ""],
        ["No clusters selected", "n=4: 4 clusters", "pct_decrease removed 4 (--min-pct-decrease)",
         "n=6: 6 clusters", "pct_decrease removed 6", "min_latents removed 0"],
    ),  # fmt: skip
    "no-elbow-columns": no_elbow_columns,
    "wrong-k-model": wrong_k_model,
    "other-cluster-model": other_cluster_model,
    "other-sae": other_sae,
    "no-stage1-record": no_stage1_record,
    "sae-moved": sae_moved,
    "samples-0": simple(["--samples-per-vertex", "0"], "--samples-per-vertex must be an int >= 1"),
    "threshold-0": simple(["--vertex-threshold", "0"], "--vertex-threshold must lie in (0, sqrt"),
    "threshold-1.5": simple(["--vertex-threshold", "1.5"], "--vertex-threshold must lie in"),
    "max-tokens-neg": simple(["--max-tokens", "-1"], "--max-tokens must be >= 0"),
    "max-tokens-below-a-chunk": simple(["--max-tokens", "3"], "--max-tokens 3 is shorter than "
                                       "the first chunk"),
    "skip-every-document": simple(["--vertex_skip_docs", "300000"], "--vertex-skip-docs 300000 "
                                  "leaves nothing to scan"),
    "manual-missing": simple(["--manual", "6:99"], "--manual 6:99", "has no cluster 99"),
    "split-unknown": simple(["--split", "nosuch"], "'nosuch' is not a corpus split"),
    "store-tokens-neg": simple(["--store-tokens", "-5"], "--store-tokens must be an int >= 0"),
    "selection-with-selection-options": lambda stage1, tmp_path: (
        ["--selection", str(tmp_path / "nope.csv")], ["--selection replaces the selection "
                                                      "options"]),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_and_writes_nothing(case, stage1, tmp_path):
    extra, messages = BAD[case](stage1, tmp_path)
    save = tmp_path / "out"
    args = s3_args(stage1, save, *extra)
    if "--skip-training" not in args:
        args.append("--skip-training")  # the quick mode; MODE 1 checks the same inputs first
    result = runner.invoke(app, args)
    for message in messages:
        one_line_error(result, message)
    assert not save.exists()


def test_a_selection_table_of_another_run_is_refused(mode2, stage1, tmp_path):
    out, _ = mode2
    rows = read_csv(out / "selection.csv")
    for change, message in (({"latent_indices": "2 3"}, "is not the one in"),
                            ({"refit_k": "7"}, "refit k=7 of cluster")):  # fmt: skip
        table = tmp_path / "edited.csv"
        with open(table, "w", newline="") as fh:
            writer = csv.DictWriter(fh, list(rows[0]))
            writer.writeheader()
            writer.writerows([{**rows[0], **change}, *rows[1:]])
        save = tmp_path / "out"
        args = s3_args(stage1, save, "--selection", str(table), "--skip-training",
                       select=["--n-clusters-list", "4,6"])  # fmt: skip
        one_line_error(runner.invoke(app, args), message)
        assert not save.exists()


def test_a_missing_selection_table_is_one_line_and_writes_nothing(stage1, tmp_path):
    save = tmp_path / "out"
    args = s3_args(stage1, save, "--selection", str(tmp_path / "nope.csv"), "--skip-training",
                   select=["--n-clusters-list", "4,6"])  # fmt: skip
    one_line_error(runner.invoke(app, args), "does not exist")
    assert not save.exists()


def test_bad_input_in_mode1_writes_nothing_either(stage1, tmp_path):
    save = tmp_path / "out"
    clusters_4 = stage1 / "clusters_4"  # the CSV is found there, but not Stage 1's settings
    one_line_error(runner.invoke(app, s3_args(clusters_4, save, select=["--n-clusters-list", "4",
                                 "--manual", "1"])),
                   f"has no stage1.json (there is one in '{stage1.resolve()}')")  # fmt: skip
    one_line_error(runner.invoke(app, s3_args(stage1, save, "--split", "sae_train")), "--split")
    one_line_error(runner.invoke(app, s3_args(stage1, save, "--max-steps", "0")),
                   "--max-steps must be a positive int")  # fmt: skip
    one_line_error(runner.invoke(app, s3_args(stage1, save, "--stage1-models-dir", str(stage1))),
                   "--stage1-models-dir is read only with --skip-training")  # fmt: skip
    assert not save.exists()


def test_select_errors_are_one_line_and_write_no_table(stage1, tmp_path):
    table = tmp_path / "picked.csv"
    base = ["aanet", "select", "--csv-dir", str(stage1), "--out", str(table)]
    one_line_error(runner.invoke(app, [*base, "--n-clusters-list", "5"]), "CSV not found")
    one_line_error(runner.invoke(app, [*base, "--n-clusters-list", "4,6", "--min-pct-decrease",
                                       "100"]), "No clusters selected")  # fmt: skip
    one_line_error(runner.invoke(app, [*base, "--n-clusters-list", "4", "--manual", "9"]),
                   "has no cluster 9")  # fmt: skip
    assert not table.exists()


def test_select_does_not_replace_a_stage3_runs_own_table(mode2, stage1):
    out, _ = mode2
    for table in (out / "selection.csv", out / "n4" / "selection_n4.csv"):
        before = table.read_bytes()
        one_line_error(runner.invoke(app, ["aanet", "select", "--csv-dir", str(stage1), *SELECT,
                                           "--out", str(table)]),
                       "belongs to the Stage 3 run")  # fmt: skip
        assert table.read_bytes() == before


def test_select_replaces_only_an_earlier_selection_table(stage1, tmp_path):
    copy = copy_stage1(stage1, tmp_path)
    stage1_csv = copy / "clusters_4" / "consolidated_metrics_n4.csv"
    before = stage1_csv.read_bytes()
    base = ["aanet", "select", "--csv-dir", str(copy), *SELECT]
    one_line_error(runner.invoke(app, [*base, "--out", str(stage1_csv)]),
                   "exists and is not a selection table")  # fmt: skip
    assert stage1_csv.read_bytes() == before
    table = tmp_path / "picked.csv"
    invoke_ok([*base, "--out", str(table)])
    first = table.read_bytes()
    invoke_ok([*base[:-2], "--refit-k", "arch", "--out", str(table)])  # a new table replaces it
    assert table.read_bytes() != first and table.read_text().startswith("n_clusters,cluster_id")
    one_line_error(runner.invoke(app, [*base, "--min-latents", "-1", "--out", str(table)]),
                   "--min-latents must be an int >= 0")  # fmt: skip


def test_a_model_must_span_exactly_its_clusters_decoder_rows(stage1, env):
    """MODE 2's check: a subspace model spans its cluster's decoder rows, and not more (a model
    of a cluster whose latents include this one's is refused too)."""
    from featgeo.archetypes import AANet
    from featgeo.archetypes.stage3 import _spans_latents
    from featgeo.sae.saelens_format import load_sae

    w_dec = load_sae(env["sae"]).W_dec.detach().double().numpy()
    row = max(read_csv(stage1 / "clusters_4" / "consolidated_metrics_n4.csv"),
              key=lambda r: int(r["n_latents"]))  # fmt: skip
    latents = [int(v) for v in row["latent_indices"].split()]
    assert len(latents) >= 3
    net = AANet.load(stage1 / "clusters_4" / f"aanet_cluster_{row['cluster_id']}_k2.pt")
    assert _spans_latents(net, w_dec[latents])
    assert not _spans_latents(net, w_dec[latents[:2]])  # a sub-cluster: the basis is too big
    others = [i for i in range(2, w_dec.shape[0]) if i not in latents][: len(latents)]
    assert not _spans_latents(net, w_dec[others])
