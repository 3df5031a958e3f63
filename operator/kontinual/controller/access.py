"""What a ContinualModel may make the operator use: only Secrets their owners marked for Kontinual.

The operator can read Secrets (the Roboflow key for polling) and its pods get them as env or
pull credentials. Whoever may create a ContinualModel must not gain that power over every Secret
in the namespace, so every Secret a spec names must carry SECRET_LABEL="true", which only someone
allowed to edit that Secret can set. The check reads only the Secret's metadata (never its
values) and runs before any child that would reference the Secret is built.
"""

from __future__ import annotations

from typing import Callable, Mapping

from kontinual.common.names import SECRET_LABEL
from kontinual.controller.spec import Spec
from kontinual.controller.specfields import SpecError


LabelsOf = Callable[[str, str], "Mapping[str, str] | None"]  # (namespace, name) -> labels, None if absent


def secret_references(spec: Spec) -> list[tuple[str, str]]:
    """(field path, Secret name) of every Secret the spec makes the operator or its pods use."""
    refs: list[tuple[str, str]] = []
    if spec.data_logging is not None:
        refs.append(("spec.dataLogging.roboflow.apiKeySecretRef", spec.data_logging.roboflow.api_key.name))
    if spec.training is not None:
        refs.append(("spec.training.dataset.apiKeySecretRef", spec.training.dataset.api_key.name))
    refs += [(f"spec.serving.imagePullSecrets[{i}]", name) for i, name in enumerate(spec.serving.image_pull_secrets)]
    return refs


def check_secrets(spec: Spec, labels_of: LabelsOf) -> None:
    """SpecError naming the first Secret that is missing or not labelled for Kontinual."""
    seen: set[str] = set()
    for where, name in secret_references(spec):
        if name in seen:
            continue
        seen.add(name)
        labels = labels_of(spec.namespace, name)
        how = f"kubectl -n {spec.namespace} label secret {name} {SECRET_LABEL}=true"
        if labels is None:
            raise SpecError(f"{where}: Secret {spec.namespace}/{name} not found; create it with the label "
                            f"{SECRET_LABEL}=true ({how})")
        if labels.get(SECRET_LABEL) != "true":
            raise SpecError(f"{where}: Secret {spec.namespace}/{name} is not marked for use by ContinualModels; "
                            f"someone who may edit that Secret can allow it with `{how}`")
