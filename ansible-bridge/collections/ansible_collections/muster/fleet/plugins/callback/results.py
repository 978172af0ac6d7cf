# -*- coding: utf-8 -*-
# MIT License. Part of muster.
"""Stdout callback: one JSON document with every task's per-host result."""

from __future__ import annotations

DOCUMENTATION = r"""
name: results
type: stdout
short_description: per-host results as one JSON document
description:
  - Prints, when the run ends, C({"plays":[{"play":NAME,"tasks":[{"task":NAME,"hosts":{HOST:RESULT}}]}],"stats":{HOST:{ok,changed,failures,unreachable,skipped}}}).
  - Each RESULT carries C(status) (ok, changed, failed, unreachable, skipped) and, when present,
    C(msg), C(rc), C(stdout), C(stderr).
  - The shape follows ansible.posix.json, which is not part of ansible-core.
"""

import json

from ansible.plugins.callback import CallbackBase

KEEP = ("msg", "rc", "stdout", "stderr", "changed", "failed", "skipped", "unreachable")


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "stdout"
    CALLBACK_NAME = "muster.fleet.results"

    def __init__(self, display=None):
        super().__init__(display)
        self.plays = []

    def v2_playbook_on_play_start(self, play):
        self.plays.append({"play": play.get_name(), "tasks": []})

    def v2_playbook_on_task_start(self, task, is_conditional):
        if not self.plays:
            self.plays.append({"play": "", "tasks": []})
        self.plays[-1]["tasks"].append({"task": task.get_name(), "hosts": {}})

    def _record(self, result, status):
        if not self.plays or not self.plays[-1]["tasks"]:
            return
        raw = result._result
        entry = {k: raw[k] for k in KEEP if k in raw}
        entry["status"] = status
        self.plays[-1]["tasks"][-1]["hosts"][result._host.get_name()] = entry

    def v2_runner_on_ok(self, result):
        self._record(result, "changed" if result._result.get("changed") else "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._record(result, "failed")

    def v2_runner_on_unreachable(self, result):
        self._record(result, "unreachable")

    def v2_runner_on_skipped(self, result):
        self._record(result, "skipped")

    def v2_playbook_on_stats(self, stats):
        hosts = sorted(stats.processed.keys())
        summary = {h: stats.summarize(h) for h in hosts}
        self._display.display(json.dumps({"plays": self.plays, "stats": summary}, sort_keys=True, indent=2))
