"""Terminal tables that never cut a number: ``FittedTable`` splits into parts rather than
squeeze a figure, at any width."""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.console import Console, ConsoleOptions, RenderResult
from rich.constrain import Constrain
from rich.table import Table
from rich.text import Text

COLUMN_RULES = 3  # what each column adds to a table's width: a rule and a space either side


@dataclass(frozen=True)
class FittedTable:
    """A table that never cuts a figure, at any width it is printed at (a terminal, COLUMNS,
    80 columns where output is piped). Where its columns do not fit, those that do not go to
    further parts under the first, each part repeating the ``keys`` leading columns that name
    a row. Figures never wrap: a column is at least as wide as its widest cell, and as wide
    as its header where there is room (else the header wraps); only narrower than the keys
    and one column does a figure fold, its digits carried to the next line, never an
    ellipsis. Cells are plain text, never markup."""

    headers: list[str]
    rows: list[list[str]]
    keys: int = 1  # leading columns that name a row, repeated in every part
    title: str | None = None  # rich markup: on the first part
    caption: str | None = None  # plain text, under the last part
    left: frozenset[str] = frozenset()  # left-justified columns (names); the others: figures
    wrap: frozenset[str] = frozenset()  # columns of prose, which may wrap between words
    groups: dict[str, str] = field(default_factory=dict)  # header → group kept in one part

    def widths(self) -> list[int]:
        """The narrowest each column can be without breaking a cell (prose: a word)."""
        return [
            max(
                [_longest_word(name)]
                + [
                    _longest_word(row[i]) if name in self.wrap else _widest_line(row[i])
                    for row in self.rows
                ]
            )
            for i, name in enumerate(self.headers)
        ]

    def sizes(self, columns: list[int], width: int) -> list[int]:
        """One part's column widths: each as narrow as its cells allow, then, in order, as
        wide as its header and cells where room is left (a header wraps, never a figure)."""
        narrowest, sizes = self.widths(), []
        room = width - 1 - sum(narrowest[i] + COLUMN_RULES for i in columns)
        for i in columns:
            whole = max(len(self.headers[i]), *(_widest_line(row[i]) for row in self.rows))
            grow = max(0, min(room, whole - narrowest[i]))
            sizes.append(narrowest[i] + grow)
            room -= grow
        return sizes

    def parts(self, width: int) -> list[list[int]]:
        """Column indices per part: the keys, then whole groups while they fit ``width``."""
        widths, keys = self.widths(), list(range(self.keys))
        room = width - 1 - sum(widths[i] + COLUMN_RULES for i in keys)
        parts, current, left = [], [], room
        for block in self._blocks(widths, room):
            cost = sum(widths[i] + COLUMN_RULES for i in block)
            if current and cost > left:
                parts.append(keys + current)
                current, left = [], room
            current, left = current + block, left - cost
        return [*parts, keys + current]

    def _blocks(self, widths: list[int], room: int) -> list[list[int]]:
        """The columns after the keys, neighbours of one group together, unless the group
        is wider than ``room`` (a part less its keys): then each column on its own."""
        blocks: list[list[int]] = []
        for i in range(self.keys, len(self.headers)):
            group = self.groups.get(self.headers[i])
            if blocks and group is not None and self.groups.get(self.headers[i - 1]) == group:
                blocks[-1].append(i)
            else:
                blocks.append([i])
        fits = [sum(widths[i] + COLUMN_RULES for i in block) <= room for block in blocks]
        return [
            part
            for block, fit in zip(blocks, fits, strict=True)
            for part in ([block] if fit else [[i] for i in block])
        ]

    def table(self, columns: list[int], width: int, *, first: bool = True) -> Table:
        """One part as a rich table, its column widths set here: rich, left to itself,
        squeezes the widest columns, figures first, and ends cells with an ellipsis."""
        table = Table(title=self.title if first else None)
        for i, size in zip(columns, self.sizes(columns, width), strict=True):
            name = self.headers[i]
            justify = "left" if name in self.left else "right"
            table.add_column(name, justify=justify, width=size, overflow="fold")
        for row in self.rows:
            table.add_row(*(Text(row[i]) for i in columns))  # user text (grid values) as text
        return table

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width, widest = options.max_width, 0
        for index, columns in enumerate(self.parts(width)):
            widest = max(widest, 1 + sum(self.sizes(columns, width)) + len(columns) * COLUMN_RULES)
            yield self.table(columns, width, first=index == 0)
        if self.caption:  # wrapped under the table, where the console's soft wrap would not
            yield Constrain(Text(self.caption, overflow="fold", no_wrap=False), widest)


def _longest_word(text: str) -> int:
    return max((len(word) for word in text.split()), default=0)


def _widest_line(text: str) -> int:
    """A cell's width: its widest line (a cell of several lines keeps each whole)."""
    return max((len(line) for line in text.split("\n")), default=0)
