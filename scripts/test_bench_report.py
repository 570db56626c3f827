"""Tests of bench_report.py: its helpers, and a whole report from a small results directory.

Run with `python3 -m unittest discover -s scripts -p 'test_*.py'` (scripts/test does), or
`python3 scripts/test_bench_report.py`.
"""

import json
import os
import tempfile
import unittest
from unittest import mock

import bench_report as br  # beside this file: on the path whether run directly or discovered


def run(ops, valid=True, errors=0):
    return {"ops": ops, "p99": ops / 10, "valid": valid, "why": [] if valid else ["short by 3"],
            "errors": errors, "samples": ["bad value", "timeout", "third"]}


class Helpers(unittest.TestCase):
    def test_medians_count_only_finished_valid_runs(self):
        runs = [run(100), run(900, valid=False), {"fail": "no servers"}, run(300)]
        self.assertEqual(br.ok(runs), [runs[0], runs[3]])
        self.assertEqual(br.med(runs, "ops"), 200)
        self.assertIsNone(br.med([{"fail": "x"}], "ops"))

    def test_per_round_and_checked_mark_what_was_left_out(self):
        runs = [run(1234.4), run(900, valid=False), {"fail": "no servers"}]
        self.assertEqual(br.per_round(runs), "1,234 / INVALID (900) / failed")
        self.assertEqual(br.per_round([]), "not run")
        self.assertEqual(br.checked(runs), "**1/2 valid**")
        self.assertEqual(br.checked([run(1), run(2)]), "2/2 valid")
        self.assertEqual(br.checked([{"fail": "x"}]), "n/a")

    def test_ratios_and_goals_say_what_is_missing(self):
        self.assertEqual(br.rx(br.ratio(3, 2)), "1.50x")
        self.assertEqual(br.rx(br.ratio(None, 2)), "n/a")
        self.assertEqual(br.rx(br.ratio(3, 0)), "n/a")
        self.assertEqual(br.goal(1.0, ">=", 1.0), "met")
        self.assertEqual(br.goal(1.1, "<=", 1.0), "**not met**")
        self.assertEqual(br.goal(None, ">=", 1.0), "not measured")
        self.assertEqual(br.n0(1234567.8), "1,234,568")

    def test_failures_name_the_table_system_and_round(self):
        runs = [{"fail": "no servers"}, run(5, valid=False), run(5, errors=2)]
        self.assertEqual(br.failures_of("t2", "twemproxy", runs), [
            "table 2, twemproxy (nutcracker) -> memcached, round 1: failed: no servers",
            "table 2, twemproxy (nutcracker) -> memcached, round 2: INVALID (left out): short by 3",
            "table 2, twemproxy (nutcracker) -> memcached, round 3: 2 errors, e.g. bad value; timeout",
        ])

    def test_memcaslap_output_gives_its_final_tps(self):
        out = "servers: x\nRun time: 10.0s Ops: 700 TPS: 70 Net_rate: 9.9M/s\n"
        self.assertEqual(br.memcaslap_run(out), {"ops": 70.0, "errors": 0})
        self.assertEqual(br.memcaslap_run("crashed\n"), {"fail": "no TPS line"})


ENV = {
    "BENCH_CMDLINE": "bash scripts/bench --quick", "BENCH_SECS": "2", "BENCH_NROUNDS": "1",
    "BENCH_NKEYS": "100", "BENCH_NSWEEP_ROUNDS": "1", "BENCH_SWEEP_LIST": "1 8",
    "BENCH_QUICK": "1", "BENCH_REMOTE_OK": "1", "BENCH_START_EPOCH": "0",
    "BENCH_LOAD_BEFORE": "0 0 0", "BENCH_LOAD_AFTER": "1 1 1", "BENCH_NPROC": "2",
    "BENCH_SPREAD": "1", "BENCH_MEMCACHED_VERSION": "memcached 1.6.18",
    "BENCH_NUTCRACKER_VERSION": "nutcracker-0.5.0", "BENCH_MEMCASLAP_VERSION": "memcaslap 1.0",
    "BENCH_DISK_FS": "ext2/ext3", "BENCH_GIT": "abc1234",
}


class WholeReport(unittest.TestCase):
    def test_a_report_from_a_few_runs(self):
        with tempfile.TemporaryDirectory() as d:
            res = os.path.join(d, "results")
            os.mkdir(res)
            for system, ops in (("ctl-memory", 110_000), ("memcached", 100_000)):
                base = f"{res}/t1__{system}__c50__r1"
                report = {"ops_per_sec": ops, "errors": {"total": 0}, "error_samples": [],
                          "latency_us": {"all": {"p50": 400, "p99": 900, "p999": 2000}}}
                with open(base + ".json", "w") as f:
                    json.dump(report, f)
                with open(base + ".check", "w") as f:
                    json.dump({"valid": True}, f)
            with open(f"{res}/t5__memcached__c8__r1.fail", "w") as f:
                f.write("servers did not start\n")
            out, dat = os.path.join(d, "BENCHMARKS.md"), os.path.join(d, "c.dat")
            with mock.patch.dict(os.environ, ENV):
                br.main(["bench_report.py", res, out, dat, os.path.join(d, "c.png")])
            with open(out) as f:
                md = f.read()
            with open(dat) as f:
                points = f.read()
        self.assertIn("| 1. controlet (memory) / memcached, loadgen throughput | 1.10x | >= 1.0x | met |",
                      md)
        self.assertIn("| controlet, memory datalet | 110,000 | 110,000 | 400 | 900 | 2,000 | 0 | 1/1 valid |",
                      md)
        self.assertIn("- table 5 (8 connections), memcached 1.6 (-t 2), round 1: failed: "
                      "servers did not start", md)
        self.assertEqual(points, "# connections controlet_ops memcached_ops\n1 - -\n8 - -\n")


if __name__ == "__main__":
    unittest.main()
