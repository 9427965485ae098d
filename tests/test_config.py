"""The default config validates; malformed configs fail naming the key and what is allowed."""

import copy

import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from braggflow.config import ConfigError, check_config, check_structure_files, load_config, load_schema
from braggflow.matrix import dataset_name, expand_matrix, parse_dataset_name
from conftest import ROOT

SCHEMA = ROOT / "config/config.schema.yaml"


@pytest.fixture
def default():
    return yaml.safe_load((ROOT / "config/config.yaml").read_text())


def test_default_config_passes_both_validators(default):
    check_config(default, SCHEMA)
    validate(copy.deepcopy(default), str(SCHEMA))
    check_structure_files(default, ROOT)
    cfg = load_config(ROOT / "config/config.yaml", SCHEMA)
    assert cfg["structures"]["1ic6"]["file"].endswith("1ic6.pdb")
    assert list(expand_matrix(cfg)) == [f"{e}keV_{c}mm" for e in (6, 7, 8) for c in (150, 250, 350)]


def test_every_schema_key_has_type_description_and_is_documented():
    schema = load_schema(SCHEMA)
    readme = (ROOT / "config/README.md").read_text()

    def walk(node, path, whole_default=False):
        for key, sub in node.get("properties", {}).items():
            here = f"{path}.{key}" if path else key
            assert "type" in sub and "description" in sub, here
            # Keys of a mapping whose default is given whole (e.g. simulation.ncells) depend on each other.
            optional_ok = whole_default or "default" in sub or key in node.get("required", [])
            assert optional_ok, f"optional key {here} has no default"
            assert f"`{here}`" in readme, f"{here} missing from config/README.md"
            walk(sub, here, whole_default=bool(sub.get("default")) and sub.get("type") == "object")
            if isinstance(sub.get("additionalProperties"), dict):
                walk(sub["additionalProperties"], here + ".<name>")

    walk(schema, "")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c["matrix"].update(photon_energies_kev=[7.0, 50.0]),
         r"config key 'matrix.photon_energies_kev\[1\]': 50.0 is greater than the maximum of 30.0 \(allowed: .*keV"),
        (lambda c: c["matrix"].update(camera_lengths_m="0.25"),
         r"config key 'matrix.camera_lengths_m': '0.25' is not of type 'array'"),
        (lambda c: c["matrix"].update(photon_energy_kev=[7.0]),
         r"config key 'matrix.photon_energy_kev' is not known \(allowed keys here: camera_lengths_m, photon_energies_kev\)"),
        (lambda c: c.pop("matrix"), r"config key '<top level>': 'matrix' is a required property"),
        (lambda c: c["detector"].update(sensor_material="Ge"), r"config key 'detector.sensor_material': 'Ge' is not one of"),
        (lambda c: c["structures"].update({"bad name": {"file": "x.pdb"}}), r"does not match"),
        (lambda c: c.update(seed=-1), r"config key 'seed': -1 is less than the minimum of 0"),
        (lambda c: c["experiments"]["thermolysin_lcls_cspad"]["matched"].update(outliers_from_frames="yes"),
         r"config key 'experiments.thermolysin_lcls_cspad.matched.outliers_from_frames': 'yes' is not of type "
         r"'boolean'"),
    ],
)
def test_malformed_configs_name_the_key(default, edit, message):
    edit(default)
    with pytest.raises(ConfigError, match=message):
        check_config(default, SCHEMA)
    with pytest.raises(WorkflowError):
        validate(default, str(SCHEMA))


def test_structure_without_file_is_named(default):
    default["structures"]["lysozyme"] = {"file": "resources/structures/lysozyme.pdb"}
    with pytest.raises(ConfigError, match=r"'structures.lysozyme.file': no such file 'resources/structures/lysozyme.pdb'"):
        check_structure_files(default, ROOT)


def test_dataset_names_are_readable_and_shell_safe():
    assert dataset_name(7.0, 0.25) == "7keV_250mm"
    assert dataset_name(6.5, 0.1505) == "6.5keV_150.5mm"
    assert dataset_name(0.1 + 0.2, 0.1 + 0.2) == "0.3keV_300mm"
    assert parse_dataset_name("6.5keV_150.5mm") == (6.5, 0.1505)
    with pytest.raises(ValueError, match="not a dataset name"):
        parse_dataset_name("7keV-250mm")


def test_colliding_dataset_names_are_refused():
    with pytest.raises(ValueError, match="twice"):
        expand_matrix({"matrix": {"photon_energies_kev": [7.0, 7.0000001], "camera_lengths_m": [0.25]}})
