import csv, json, subprocess, sys, os
from pathlib import Path
from click.testing import CliRunner
from facefleet.cli import main

def test_docs(service, faces, tmp_path):
    root = tmp_path / "people"
    by = {}
    for row in csv.DictReader(open(faces / "deepface/identities.csv")):
        by.setdefault(row["identity"], []).append(row["image"])
    for p, imgs in by.items():
        (root / p).mkdir(parents=True)
        for n in imgs[:-1]:
            (root / p / n).symlink_to(faces / "deepface" / n)
    (root / "person01" / "dogs.jpg").symlink_to(faces / "dlib-boxes/dogs.jpg")
    env = {**os.environ, "FACEFLEET_URL": service.base_url, "COLUMNS": "100", "PYTHONPATH": "/work/main"}
    log = []
    def run(*args):
        r = subprocess.run([sys.executable, "-m", "facefleet.cli", *args], env=env,
                           capture_output=True, text=True, cwd=str(tmp_path))
        log.append({"args": args, "rc": r.returncode, "out": r.stdout, "err": r.stderr})
    run("enroll", str(root), "-c", "deepface")
    run("enroll", str(root), "-c", "deepface")
    sel = str(faces / "deepface/selfie-many-people.jpg")
    run("identify", sel, "-c", "deepface", "--draw", "/work/main/docs/img/identify-drawn.png")
    run("identify", str(faces / "deepface/img10.jpg"), str(faces / "deepface/img56.jpg"), "-c", "deepface")
    run("verify", str(faces / "deepface/img1.jpg"), str(faces / "deepface/img2.jpg"))
    run("verify", str(faces / "deepface/img1.jpg"), str(faces / "deepface/img3.jpg"))
    run("detect", sel, "--draw", str(tmp_path / "d.jpg"))
    run("collections")
    run("forget", "-c", "deepface", "--person", "person13")
    run("identify", sel, "-c", "deepface", "--json")
    run("collections", "--url", "http://127.0.0.1:9")
    Path("/tmp/ff_docs.json").write_text(json.dumps(log, indent=1))
