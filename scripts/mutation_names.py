"""pytest plugin for scripts/mutation.sh only (loaded with -p; needs mutmut importable).

ComfyUI's loader imports the pack under its folder path, so the module that tests call as
``sonic_diffusion.patch`` is named ``<base>/custom_nodes/comfyui-sonicdiffusion.sonic_diffusion.patch``
(tests/conftest.py aliases the short names). mutmut names its mutants by file path
(``sonic_diffusion.patch.x_fn__mutmut_1``) and compares them with ``__module__``: without this
map it records no test for any mutant and activates none. This maps both ways."""
import sys

from mutmut.mutation import trampoline

PACK_DIR_NAME = "comfyui-sonicdiffusion"
_record_hit = trampoline.record_trampoline_hit
_active_mutant = trampoline.get_mutant_under_test
_pack_key = []


def _loaded_pack_key():
    if not _pack_key:
        key = next((k for k in sys.modules if k.endswith(PACK_DIR_NAME)), None)
        if key is None:
            return None
        _pack_key.append(key)
    return _pack_key[0]


def record_short_name(name, **kwargs):
    """Stats: record ``sonic_diffusion.X.fn`` whatever folder path the loader put in front."""
    start = name.find(".sonic_diffusion.")
    return _record_hit(name[start + 1:] if start >= 0 else name, **kwargs)


def active_mutant_by_loaded_name():
    """The active mutant's module as the loader named it, so the trampoline's check matches."""
    name = _active_mutant()
    key = _loaded_pack_key() if name.startswith("sonic_diffusion.") else None
    return f"{key}.{name}" if key else name


trampoline.record_trampoline_hit = record_short_name
trampoline.get_mutant_under_test = active_mutant_by_loaded_name
