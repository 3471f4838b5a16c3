"""Runs TypeScript cells in the tslab kernel headless (nbclient), for tests/notebook/*.test.ts,
and writes each cell's outputs as the saved notebook would hold them (display updates applied).

usage: run_notebook.py JUPYTER_PATH CWD CELLS_JSON OUT_JSON
  CELLS_JSON: a file holding ["source", ...]; OUT_JSON gets [[output, ...] per cell]
"""

import json
import os
import sys


def main() -> None:
    jupyter_path, cwd, cells_path, out_path = sys.argv[1:5]
    os.environ["JUPYTER_PATH"] = jupyter_path
    import nbformat
    from nbclient import NotebookClient

    with open(cells_path, encoding="utf-8") as f:
        sources = json.load(f)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {"name": "tslab", "display_name": "TypeScript", "language": "typescript"}
    NotebookClient(nb, timeout=120, kernel_name="tslab", resources={"metadata": {"path": cwd}}).execute()
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump([cell.outputs for cell in nb.cells], f)


if __name__ == "__main__":
    main()
