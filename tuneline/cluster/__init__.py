"""Cluster tooling for AKS: render the kustomizations under k8s/, validate and police them, render node pools, and
check that a cluster holds what the compiled pipelines ask of it.

Modules: render (kustomize itself, keeping each object's source file), schemas (structural schemas of the CRDs
we use), policy (restricted Pod Security, secrets, GPU tolerations, digests), validate (the `make k8s-validate` entry
point), nodepools (az CLI and Azure Service Operator renderings of k8s/nodepools.yaml), check / reads / submit / cli
(`tuneline cluster check`: what a compiled pipeline and the retraining CronJob's submission need from the cluster).
"""
