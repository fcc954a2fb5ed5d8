"""Hooked models: loading (TransformerLens in, TransformerLens out), components, fingerprints."""

from mechkit.models.components import (
    Component as Component,
    check_hook_name as check_hook_name,
    component as component,
    components as components,
    input_hooks_enabled as input_hooks_enabled,
)
from mechkit.models.fingerprint import fingerprint as fingerprint
from mechkit.models.loading import (
    adapter_organisms as adapter_organisms,
    available_organisms as available_organisms,
    load_model as load_model,
    organisms_dir as organisms_dir,
    save_organism as save_organism,
    spec_of as spec_of,
)
