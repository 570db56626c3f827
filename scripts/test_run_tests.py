"""Tests of run_tests.py: every binary runs, in its lane, and any failure fails the run."""

import contextlib
import io
import json
import os
import stat
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import run_tests  # noqa: E402


def artifact(package, kind, name, exe, manifest, test=True):
    return json.dumps({
        "reason": "compiler-artifact",
        "package_id": f"path+file:///w/{package}#{package}@0.1.0",
        "manifest_path": manifest,
        "target": {"kind": [kind], "name": name, "src_path": f"/w/{package}/src/{name}.rs"},
        "profile": {"test": test},
        "executable": exe,
    })


class RunTests(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.addCleanup(self.dir.cleanup)
        self.manifest = os.path.join(self.dir.name, "Cargo.toml")
        self.log = os.path.join(self.dir.name, "ran")

    def script(self, name, rc):
        """A fake test binary that notes its name, directory and niceness, and exits rc."""
        path = os.path.join(self.dir.name, name)
        with open(path, "w") as f:
            f.write(f"#!/bin/sh\necho \"{name} $PWD $(nice) $CARGO_MANIFEST_DIR\" >> {self.log}\n"
                    f"exit {rc}\n")
        os.chmod(path, os.stat(path).st_mode | stat.S_IEXEC)
        return path

    def run_with(self, lines):
        path = os.path.join(self.dir.name, "artifacts.json")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        out, err = io.StringIO(), io.StringIO()
        with tempfile.TemporaryFile("w+") as serial_out, contextlib.redirect_stdout(out), \
                contextlib.redirect_stderr(err):
            rc = run_tests.main(["run_tests.py", path], serial_out)
        ran = {}
        with open(self.log) as f:
            for line in f:
                name, cwd, nice, manifest_dir = line.split()
                ran[name] = (cwd, int(nice), manifest_dir)
        return rc, ran, out.getvalue(), err.getvalue()

    def all_side_lane(self, rc_of=lambda key: 0):
        lines = []
        for key in sorted(run_tests.SIDE_LANE):
            package, kind, name = key.split(":")
            exe = self.script(f"{package}-{kind}-{name}", rc_of(key))
            lines.append(artifact(package, kind, name, exe, self.manifest))
        return lines

    def test_every_binary_runs_in_its_lane_in_its_package_directory(self):
        lines = self.all_side_lane()
        lines.append(artifact("tailorkv-tests", "test", "faults",
                              self.script("faults", 0), self.manifest))
        # Not a test binary (an example built by cargo test): not run.
        lines.append(artifact("tailorkv-examples", "bin", "loadgen",
                              self.script("not-a-test", 0), self.manifest, test=False))
        lines.append("not json, as cargo may print")
        rc, ran, out, _ = self.run_with(lines)
        self.assertEqual(rc, 0, out)
        self.assertEqual(len(ran), len(run_tests.SIDE_LANE) + 1)
        self.assertNotIn("not-a-test", ran)
        base = os.nice(0)
        self.assertEqual(ran["faults"], (self.dir.name, base, self.dir.name))
        for name, (cwd, nice, _) in ran.items():
            if name != "faults":
                self.assertEqual(cwd, self.dir.name)
                self.assertEqual(nice, min(19, base + run_tests.SIDE_NICE), name)
        self.assertIn("serial", out)
        self.assertIn("tailorkv-tests:test:faults", out)

    def test_a_failure_in_either_lane_fails_the_run_and_the_rest_still_run(self):
        failing = "tailorkv-tests:test:binary"
        lines = self.all_side_lane(lambda key: 1 if key == failing else 0)
        lines.append(artifact("tailorkv-tests", "test", "faults",
                              self.script("faults", 3), self.manifest))
        rc, ran, out, err = self.run_with(lines)
        self.assertEqual(rc, 1)
        self.assertEqual(len(ran), len(run_tests.SIDE_LANE) + 1)
        self.assertIn(failing, err)
        self.assertIn("tailorkv-tests:test:faults", err)
        self.assertIn("FAILED", out)

    def test_a_side_lane_binary_not_built_is_an_error(self):
        lines = self.all_side_lane()[1:]
        path = os.path.join(self.dir.name, "artifacts.json")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            self.assertEqual(run_tests.main(["run_tests.py", path]), 2)
        self.assertIn("not built", err.getvalue())


if __name__ == "__main__":
    unittest.main()
