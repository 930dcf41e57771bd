"""Cluster side of tuneline: render the kustomizations under k8s/, validate and police them, render node pools.

Modules: render (kustomize itself, keeping each object's source file), schemas (structural schemas of the CRDs
we use), policy (restricted Pod Security, secrets, GPU tolerations, digests), validate (the `make k8s-validate` entry
point), nodepools (az CLI and Azure Service Operator renderings of k8s/nodepools.yaml).
"""
