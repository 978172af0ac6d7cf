# -*- coding: utf-8 -*-
# MIT License. Part of muster: https://example.invalid/muster
"""Inventory plugin: hosts, groups and hostvars from musterd via muster-inventory."""

from __future__ import annotations

DOCUMENTATION = r"""
name: muster
short_description: muster fleet inventory
description:
  - Runs C(muster-inventory --list), which makes one streaming call to musterd, and adds the
    hosts, groups and C(_meta.hostvars) it prints.
  - Groups by kind, site, rack, role, lifecycle, health, drift state and every label; hostvars
    C(ansible_host), C(ansible_port), C(ansible_user) from the device's SSH endpoint and
    C(muster_*) facts.
  - The configuration file must end in C(muster.yml) or C(muster.yaml).
  - Every string hostvar comes from musterd's store (names, labels, facts hosts reported) and
    is marked unsafe, so Ansible never templates it. Devices labelled C(muster.io/discovered)
    (VMs an agent reported, not yet adopted) are not hosts.
extends_documentation_fragment:
  - constructed
options:
  plugin:
    description: Marks this file as this plugin's configuration.
    required: true
    choices: ['muster.fleet.muster']
  executable:
    description: Path of muster-inventory (by default it is found on PATH).
    type: str
    default: muster-inventory
    env:
      - name: MUSTER_INVENTORY
  server:
    description: The musterd URL; when unset, MUSTER_SERVER or the muster-inventory config file.
    type: str
  token_file:
    description: File holding the bearer token; when unset, MUSTER_TOKEN or MUSTER_TOKEN_FILE.
    type: path
  ca_cert:
    description: CA certificate for an https server.
    type: path
  insecure:
    description:
      - Allow plaintext http:// to a server that is not on loopback (the token then travels
        unencrypted); without it muster-inventory refuses before connecting.
    type: bool
    default: false
  selector:
    description: Label selector narrowing the hosts.
    type: str
  in_window:
    description: Only hosts whose maintenance window is open now.
    type: bool
    default: false
  now:
    description: Evaluate windows at this RFC 3339 instant (tests, what-if runs).
    type: str
  cache_dir:
    description: Directory for muster-inventory's export cache.
    type: path
  config:
    description: muster-inventory config file (YAML or INI).
    type: path
"""

EXAMPLES = r"""
# muster.yml
plugin: muster.fleet.muster
server: https://muster.example:7070
selector: env=prod
keyed_groups:
  - key: muster_vendor
    prefix: vendor
compose:
  ansible_python_interpreter: "'/usr/bin/python3'"
groups:
  unhealthy: muster_health != 'ok'
"""

import json
import subprocess

from ansible.errors import AnsibleParserError
from ansible.module_utils.common.text.converters import to_native
from ansible.plugins.inventory import BaseInventoryPlugin, Constructable
from ansible.utils.unsafe_proxy import wrap_var


def _unsafe_hook(obj):
    """muster-inventory writes every string hostvar as {"__ansible_unsafe": "..."} (the script
    protocol's marking). Here it becomes wrap_var's unsafe text: never templated, on 2.19 (no
    TrustedAsTemplate tag) and on older ansible-core (AnsibleUnsafeText) alike."""
    if len(obj) == 1 and "__ansible_unsafe" in obj:
        value = obj["__ansible_unsafe"]
        if not isinstance(value, str):
            raise ValueError("__ansible_unsafe holds a %s, not a string" % type(value).__name__)
        return wrap_var(value)
    return obj


class InventoryModule(BaseInventoryPlugin, Constructable):
    NAME = "muster.fleet.muster"

    def verify_file(self, path):
        return super().verify_file(path) and path.endswith(("muster.yml", "muster.yaml"))

    def _command(self):
        cmd = [self.get_option("executable"), "--list"]
        for opt, flag in (
            ("server", "--server"),
            ("token_file", "--token-file"),
            ("ca_cert", "--ca-cert"),
            ("selector", "--selector"),
            ("now", "--now"),
            ("cache_dir", "--cache-dir"),
            ("config", "--config"),
        ):
            value = self.get_option(opt)
            if value:
                cmd += [flag, str(value)]
        if self.get_option("in_window"):
            cmd.append("--in-window")
        if self.get_option("insecure"):
            cmd.append("--insecure")
        return cmd

    def parse(self, inventory, loader, path, cache=True):
        super().parse(inventory, loader, path, cache)
        self._read_config_data(path)
        cmd = self._command()
        try:
            proc = subprocess.run(cmd, capture_output=True, check=False)
        except OSError as e:
            raise AnsibleParserError("cannot run %s: %s" % (cmd[0], to_native(e)))
        if proc.returncode != 0:
            err = to_native(proc.stderr).strip() or "exit status %d" % proc.returncode
            raise AnsibleParserError(err)
        try:
            data = json.loads(proc.stdout, object_hook=_unsafe_hook)
        except ValueError as e:
            raise AnsibleParserError("muster-inventory printed invalid JSON: %s" % to_native(e))

        hostvars = data.get("_meta", {}).get("hostvars", {})
        strict = self.get_option("strict")
        for name, group in data.items():
            if name in ("_meta", "all", "ungrouped") or not isinstance(group, dict):
                continue
            self.inventory.add_group(name)
            for host in group.get("hosts", []):
                self.inventory.add_host(host, group=name)
        for host in data.get("ungrouped", {}).get("hosts", []):
            self.inventory.add_host(host)
        for host, variables in hostvars.items():
            self.inventory.add_host(host)
            for key, value in variables.items():
                # wrap_var again: a value that is not marked (a number, a bool) stays as it is,
                # and nothing from the server can ever be trusted as a template.
                self.inventory.set_variable(host, key, wrap_var(value))
            # Constructable: compose, groups and keyed_groups over the muster hostvars and the
            # magic variables (inventory_hostname, group_names).
            all_vars = self.inventory.get_host(host).get_vars()
            self._set_composite_vars(self.get_option("compose"), all_vars, host, strict=strict)
            all_vars = self.inventory.get_host(host).get_vars()
            self._add_host_to_composed_groups(self.get_option("groups"), all_vars, host, strict=strict)
            self._add_host_to_keyed_groups(self.get_option("keyed_groups"), all_vars, host, strict=strict)
