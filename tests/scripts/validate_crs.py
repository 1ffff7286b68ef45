"""Validate custom resources against the openAPIV3Schema of their CRDs, offline.

Strict like `kubectl apply` with server-side field validation: an object field that the
schema does not list (and that is not under x-kubernetes-preserve-unknown-fields) is an
error, as are wrong types, enum values and ranges. CEL rules are not evaluated here (the
agent's own validation mirrors them and is tested separately).

usage: validate_crs.py --crd CRD.yaml... --valid FILE... --invalid FILE...
Every sluice/InferencePool document in a --valid file must pass; every --invalid file must
contain at least one document that fails. Exit status 1 on any mismatch.
"""

import argparse
import copy
import sys

import jsonschema
import yaml


def strict(schema):
    schema = copy.deepcopy(schema)

    def walk(s):
        if not isinstance(s, dict):
            return
        if "properties" in s and not s.get("x-kubernetes-preserve-unknown-fields"):
            s.setdefault("additionalProperties", False)
        for p in s.get("properties", {}).values():
            walk(p)
        if isinstance(s.get("items"), dict):
            walk(s["items"])
        if isinstance(s.get("additionalProperties"), dict):
            walk(s["additionalProperties"])

    walk(schema)
    # The API server adds these to every custom resource's schema.
    props = schema.setdefault("properties", {})
    props["apiVersion"] = {"type": "string"}
    props["kind"] = {"type": "string"}
    meta_fields = ["name", "namespace", "generateName", "labels", "annotations", "finalizers", "ownerReferences"]
    props["metadata"] = {
        "type": "object",
        "properties": {f: {} for f in meta_fields},
        "additionalProperties": False,
    }
    return schema


def load_crds(paths):
    schemas = {}
    for path in paths:
        with open(path) as f:
            for crd in yaml.safe_load_all(f):
                if not crd or crd.get("kind") != "CustomResourceDefinition":
                    continue
                spec = crd["spec"]
                for version in spec["versions"]:
                    key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
                    schemas[key] = strict(version["schema"]["openAPIV3Schema"])
    return schemas


def errors_of(path, schemas):
    """(checked documents, list of error strings) for one file."""
    checked, errors = 0, []
    with open(path) as f:
        docs = list(yaml.safe_load_all(f))
    for index, doc in enumerate(docs, 1):
        if not isinstance(doc, dict):
            continue
        key = (doc.get("apiVersion"), doc.get("kind"))
        schema = schemas.get(key)
        if schema is None:
            continue
        checked += 1
        validator = jsonschema.Draft7Validator(schema)
        for e in validator.iter_errors(doc):
            field = ".".join(str(p) for p in e.absolute_path) or "(root)"
            errors.append(f"{path}: document {index} ({key[1]}): {field}: {e.message}")
    return checked, errors


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--crd", nargs="+", required=True)
    ap.add_argument("--valid", nargs="*", default=[])
    ap.add_argument("--invalid", nargs="*", default=[])
    args = ap.parse_args()
    schemas = load_crds(args.crd)
    failed = False
    for path in args.valid:
        checked, errors = errors_of(path, schemas)
        for e in errors:
            print(f"FAIL {e}")
            failed = True
        if checked == 0:
            print(f"FAIL {path}: no custom resource to check")
            failed = True
        elif not errors:
            print(f"ok {path}: {checked} custom resources valid")
    for path in args.invalid:
        checked, errors = errors_of(path, schemas)
        if errors:
            print(f"ok {path}: rejected: {errors[0]}")
        else:
            print(f"FAIL {path}: accepted ({checked} documents checked), expected a schema error")
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
