import subprocess
import sys


def test_mlp_imports_without_the_framework_libraries():
    # Make optuna, joblib, matplotlib, sqlalchemy and sweep unimportable, then import mlp.
    code = (
        "import sys\n"
        "blocked = ('optuna', 'joblib', 'matplotlib', 'sqlalchemy', 'sweep')\n"
        "for name in blocked:\n"
        "    sys.modules[name] = None\n"
        "import mlp\n"
        "print(sorted(m for m, mod in sys.modules.items()\n"
        "             if m.split('.')[0] in blocked and mod is not None))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
