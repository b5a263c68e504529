"""The appliance files of the BEAT images (gns3/appliances/): checked by GNS3's own code.

- ``*.gns3a`` (registry version 8, the current gns3-registry schema: ``settings`` with
  ``template_type: docker``): gns3-gui 3.0.6's own import check (``gns3.registry.appliance``:
  its JSON schema ``appliance_v8.json``, template type and properties), what File > Import
  appliance runs;
- ``server/*.gns3a`` (registry version 6): gns3-server 3.0.6's own pydantic appliance model and
  its appliance-to-template conversion, whose template its own template model accepts; and a real
  server that loads them from its appliances directory and installs them as templates. That server
  version's model stops at registry version 6 (the test shows it refusing version 8): hence two
  flavours of the same two appliances.
"""
import json
import os
import urllib.request

import pytest

from beat_lab import gns3
from test_gns3_support import REPO, gns3_server, in_gns3, require_gns3_venv

APPL = os.path.join(REPO, "gns3", "appliances")
FILES = ("beat-router.gns3a", "beat-governance.gns3a")


@pytest.fixture(scope="module")
def venv():
    return require_gns3_venv()


def test_the_committed_files_are_what_beatd_writes(tmp_path):
    gns3.write_appliances(str(tmp_path))
    for sub in ("", "server"):
        for f in FILES:
            with open(os.path.join(APPL, sub, f)) as a, open(os.path.join(tmp_path, sub, f)) as b:
                assert a.read() == b.read(), (f"gns3/appliances/{sub}/{f} is stale: run "
                                              "beat-lab gns3 appliances --out gns3/appliances")


GUI_CHECK = r"""
import json, sys
from gns3.registry.appliance import Appliance
out = {}
for path in sys.argv[1:]:
    a = Appliance(None, path)      # the GUI's import check: schema, versions, template type
    out[path] = {"type": a.template_type(), "properties": a.template_properties(),
                 "registry_version": a["registry_version"]}
print(json.dumps(out))
"""


def test_registry_8_files_pass_the_gui_import_check(venv):
    paths = [os.path.join(APPL, f) for f in FILES]
    got = in_gns3(GUI_CHECK, *paths)
    for path in paths:
        assert got[path]["type"] == "docker"
        assert got[path]["registry_version"] == 8
        with open(os.path.join(APPL, "server", os.path.basename(path))) as f:
            server_flavour = json.load(f)
        # both flavours describe the same template
        assert got[path]["properties"] == server_flavour["docker"]
    assert got[paths[0]]["properties"]["image"] == gns3.ROUTER_IMAGE
    assert got[paths[1]]["properties"]["image"] == gns3.GOVERNANCE_IMAGE


def test_the_gui_check_rejects_a_broken_file(venv, tmp_path):
    with open(os.path.join(APPL, FILES[0])) as f:
        a = json.load(f)
    a["settings"][0]["template_properties"]["adapters"] = "four"
    bad = tmp_path / "bad.gns3a"
    bad.write_text(json.dumps(a))
    got = in_gns3("import json,sys\nfrom gns3.registry.appliance import Appliance, "
                  "ApplianceError\ntry:\n    Appliance(None, sys.argv[1]); print('null')\n"
                  "except ApplianceError as e:\n    print(json.dumps(str(e)))", str(bad))
    assert got and "Invalid appliance file" in got


SERVER_CHECK = r"""
import json, sys
import pydantic
from gns3server import schemas
from gns3server.controller.appliance_to_template import ApplianceToTemplate
out = {}
for path in sys.argv[1:]:
    with open(path) as f:
        data = json.load(f)
    try:
        schemas.Appliance.model_validate(data)
    except pydantic.ValidationError as e:
        out[path] = {"error": str(e)}
        continue
    t = ApplianceToTemplate().new_template(data, None, "local")
    # the server's own model of a docker template (what POST /v3/templates validates)
    model = schemas.DockerTemplate.model_validate(t)
    out[path] = {"template": t, "validated": json.loads(model.model_dump_json())}
print(json.dumps(out))
"""


def test_server_model_accepts_the_server_flavour(venv):
    paths = [os.path.join(APPL, "server", f) for f in FILES]
    got = in_gns3(SERVER_CHECK, *paths)
    for path, kind in zip(paths, ("router", "governance")):
        assert "error" not in got[path], got[path]
        t = got[path]["validated"]
        want = gns3.template_from_appliance(kind)
        for k in ("name", "category", "image", "adapters", "console_type", "environment",
                  "extra_volumes", "symbol", "usage"):
            assert t[k] == want[k], k
        assert got[path]["template"]["template_type"] == "docker"


def test_server_model_stops_at_registry_version_6(venv):
    """Why there are two flavours: gns3-server 3.0.6 refuses registry version 8."""
    got = in_gns3(SERVER_CHECK, os.path.join(APPL, FILES[0]))
    err = got[os.path.join(APPL, FILES[0])].get("error", "")
    assert "registry_version" in err


def _get(srv, token, path):
    req = urllib.request.Request(srv.url + path, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def test_a_real_server_loads_and_installs_them(tmp_path):
    appliances = [os.path.join(APPL, "server", f) for f in FILES]
    with gns3_server(tmp_path, appliances) as srv:
        client = gns3.GNS3Client(srv.url, "admin", srv.password)
        listed = {a["appliance_id"]: a for a in client.request("GET", "/v3/appliances")}
        assert gns3.ROUTER_APPLIANCE_ID in listed, srv.log()
        assert gns3.GOVERNANCE_APPLIANCE_ID in listed
        for aid in (gns3.ROUTER_APPLIANCE_ID, gns3.GOVERNANCE_APPLIANCE_ID):
            client.request("POST", f"/v3/appliances/{aid}/install")
        templates = {t["name"]: t for t in client.request("GET", "/v3/templates")}
        for kind in ("router", "governance"):
            want = gns3.template_from_appliance(kind)
            t = templates[want["name"]]
            assert t["template_type"] == "docker"
            for k in ("image", "adapters", "environment", "extra_volumes", "category"):
                assert t[k] == want[k], k
        # `beat-lab gns3 project --server` finds them rather than making its own
        assert gns3.ensure_templates(client) == {
            "router": templates[gns3.ROUTER_TEMPLATE]["template_id"],
            "governance": templates[gns3.GOVERNANCE_TEMPLATE]["template_id"]}
