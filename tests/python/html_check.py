"""Reference side of tests/unit/notebook-plot.test.ts: reads an HTML report with Python's own HTML
parser and reports its structure, so that the test checks the page as a browser would tokenize it.

usage: html_check.py PATH   print {doctype, title, unclosed, stray_end_tags, div_ids, scripts, script_srcs, table_rows}
"""

import json
import sys
from html.parser import HTMLParser

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Structure(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.doctype = None
        self.stack: list[str] = []
        self.stray: list[str] = []
        self.div_ids: list[str] = []
        self.scripts = 0
        self.script_srcs: list[str] = []
        self.title = ""
        self.table_rows: list[list[str]] = []
        self._cells: list[str] | None = None
        self._text_target: str | None = None

    def handle_decl(self, decl: str) -> None:
        self.doctype = decl

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attrs = dict(attrs)
        if tag == "div" and "id" in attrs:
            self.div_ids.append(attrs["id"])
        if tag == "script":
            self.scripts += 1
            if "src" in attrs:
                self.script_srcs.append(attrs["src"])
        if tag == "tr":
            self._cells = []
        if tag in ("th", "td") and self._cells is not None:
            self._cells.append("")
            self._text_target = "cell"
        if tag == "title":
            self._text_target = "title"
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if self.stack and self.stack[-1] == tag:
            self.stack.pop()
        else:
            self.stray.append(tag)
        if tag == "tr" and self._cells is not None:
            self.table_rows.append(self._cells)
            self._cells = None
        if tag in ("th", "td", "title"):
            self._text_target = None

    def handle_data(self, data: str) -> None:
        if self._text_target == "title":
            self.title += data
        elif self._text_target == "cell" and self._cells:
            self._cells[-1] += data


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as f:
        text = f.read()
    parser = Structure()
    parser.feed(text)
    parser.close()
    print(
        json.dumps(
            {
                "doctype": parser.doctype,
                "title": parser.title,
                "unclosed": parser.stack,
                "stray_end_tags": parser.stray,
                "div_ids": parser.div_ids,
                "scripts": parser.scripts,
                "script_srcs": parser.script_srcs,
                "table_rows": parser.table_rows,
            }
        )
    )


if __name__ == "__main__":
    main()
