"""Executes a notebook top to bottom in the tslab kernel (nbclient), saves it with its outputs, and
writes its HTML (nbconvert) beside it, for tests/notebook/notebooks.test.ts.

usage: execute_notebook.py JUPYTER_PATH NOTEBOOK OUT_IPYNB OUT_HTML [TIMEOUT_S]
Exits 1 naming the failing cell when one raises (the executed notebook is still saved).
"""

import os
import re
import sys


def main() -> None:
    jupyter_path, path, out_ipynb, out_html = sys.argv[1:5]
    timeout = int(sys.argv[5]) if len(sys.argv) > 5 else 300
    os.environ["JUPYTER_PATH"] = jupyter_path
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError
    from nbconvert import HTMLExporter

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="tslab", resources={"metadata": {"path": os.path.dirname(path)}})
    failed = None
    try:
        client.execute()
    except CellExecutionError as error:
        failed = str(error)
    nbformat.write(nb, out_ipynb)
    body, _ = HTMLExporter().from_notebook_node(nb)
    # The template loads require.js and MathJax from a CDN; this machine is offline and the
    # notebooks need neither (tiller's outputs carry their own scripts), so those tags go.
    body = re.sub(r'<script src="https?://[^"]*">\s*</script>', "", body)
    with open(out_html, "w", encoding="utf-8") as f:
        f.write(body)
    if failed:
        sys.stderr.write(failed)
        sys.exit(1)


if __name__ == "__main__":
    main()
