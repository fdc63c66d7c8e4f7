"""Validates multi-document Kubernetes YAML files against the official JSON schemas, offline.

Usage: k8s_validate.py VERSION FILE...  Exits 1 listing every invalid document, else prints
one line per document. CRDs are validated as CustomResourceDefinition objects; custom resources
themselves have no schema in kubernetes-validate and are reported as such.
"""
import sys

import kubernetes_validate
import yaml


def main():
    version, files = sys.argv[1], sys.argv[2:]
    failures = 0
    for path in files:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d is not None]
        if not docs:
            print(f"{path}: no documents")
            failures += 1
        for doc in docs:
            name = f"{path}: {doc.get('kind')} {doc.get('metadata', {}).get('name')}"
            try:
                kubernetes_validate.validate(doc, version, strict=True)
                print(f"{name}: valid")
            except kubernetes_validate.ValidationError as e:
                print(f"{name}: INVALID at {'.'.join(str(p) for p in e.path)}: {e.message}")
                failures += 1
            except kubernetes_validate.SchemaNotFoundError as e:
                print(f"{name}: NO SCHEMA: {e}")
                failures += 1
    sys.exit(1 if failures else 0)


main()
