"""`clipprobe --help` must not import the heavy libraries (it would take seconds)."""

import subprocess
import sys

HEAVY = ("torch", "faiss", "open_clip", "matplotlib", "pyarrow", "pandas", "scipy", "datasets", "pyspark")


def test_help_imports_nothing_heavy():
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from clipprobe.cli import cli\n"
        "r = CliRunner().invoke(cli, ['--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "for name in cli.commands:\n"
        "    r = CliRunner().invoke(cli, [name, '--help'])\n"
        "    assert r.exit_code == 0, (name, r.output)\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"--help imported: {out.stdout.strip()}"
