"""A model config's graph laid out left to right for the Models page, as SVG coordinates.

The nodes and edges come from `describe.plan_graph` (the same graph `models show --dot`
prints). Each node goes in the column after the latest node it depends on: context inputs
first, then each fetch stage (concurrent fetches stacked in one column), interactions,
models and expressions in dependency order, and the response last. Text is drawn in a
monospace font, so its width can be computed here without a browser.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

from inferstack.inferflow.describe import GraphEdge, GraphNode, PlanGraph

CHAR_WIDTH = 7.3  # 12 px monospace
LABEL_CHAR_WIDTH = 6.7  # 11 px monospace
LINE_HEIGHT = 17.0
PADDING = 10.0
ROW_GAP = 26.0
MARGIN = 16.0
PORT_SPACING = 17.0  # between the ends of edges along a node's side
BEND_ROOM = 56.0  # between a column's edge labels and the column before it
LABEL_GAP = 12.0  # between a label and the node its edge enters
MAX_LABEL_CHARS = 44  # key edges: where the key comes from
MAX_VALUE_LABEL_CHARS = 24  # other edges: the names, or how many
MAX_LINE_CHARS = 30  # longer lines in a node (expressions) are wrapped


@dataclass(frozen=True)
class Box:
    node: GraphNode
    x: float
    y: float
    width: float
    height: float
    lines: tuple[str, ...]

    @property
    def text_rows(self) -> list[tuple[float, float, str]]:
        """(x, baseline y, text) of each line inside the box."""
        top = self.y + PADDING / 2
        return [
            (self.x + PADDING, top + LINE_HEIGHT * (row + 1) - 4, line)
            for row, line in enumerate(self.lines)
        ]

    @property
    def anchor(self) -> str:
        """The id of the node's details on the page: "node-fetch-affinity"."""
        return "node-" + self.node.id.replace(":", "-")


@dataclass(frozen=True)
class Link:
    edge: GraphEdge
    path: str  # SVG path data
    label: str
    label_x: float  # centre
    label_y: float  # baseline
    label_width: float
    is_key: bool  # the edge carries a fetch's key (drawn dashed)


@dataclass(frozen=True)
class Drawing:
    width: float
    height: float
    boxes: list[Box]
    links: list[Link]


def columns_of(graph: PlanGraph) -> dict[str, int]:
    """Node -> column: one more than the latest column feeding it (nodes come in dependency
    order from plan_graph, except that the response is last)."""
    sources: dict[str, list[str]] = {}
    for edge in graph.edges:
        sources.setdefault(edge.target, []).append(edge.source)
    column: dict[str, int] = {}

    def place(node: str, seen: frozenset[str] = frozenset()) -> int:
        if node not in column:
            feeding = [s for s in sources.get(node, []) if s not in seen]
            column[node] = 1 + max((place(s, seen | {node}) for s in feeding), default=-1)
        return column[node]

    for node in graph.nodes:
        place(node.id)
    return column


def edge_label(edge: GraphEdge) -> str:
    """Key edges say where the key comes from ("product.category_id -> category_id"); others
    name what flows, shortened past a few names."""
    if edge.labels and all(label.startswith("key ") for label in edge.labels):
        text = "; ".join(recipe.replace(" -> ", " \u2192 ") for recipe in edge.recipes)
        return text if len(text) <= MAX_LABEL_CHARS else text[: MAX_LABEL_CHARS - 1] + "\u2026"
    text = edge.label
    if len(text) > MAX_VALUE_LABEL_CHARS:  # the names are in the edge's tooltip
        kind = "features" if edge.source.startswith(("fetch:", "interactions:")) else "values"
        text = f"{len(edge.labels)} {kind}"
    return text


def layout(graph: PlanGraph) -> Drawing:
    column = columns_of(graph)
    count = max(column.values(), default=0) + 1
    incoming: dict[str, list[GraphEdge]] = {}
    outgoing: dict[str, list[GraphEdge]] = {}
    for edge in graph.edges:
        incoming.setdefault(edge.target, []).append(edge)
        outgoing.setdefault(edge.source, []).append(edge)
    by_column: list[list[GraphNode]] = [[] for _ in range(count)]
    for node in graph.nodes:
        by_column[column[node.id]].append(node)

    def height(node: GraphNode) -> float:
        ports = max(len(incoming.get(node.id, [])), len(outgoing.get(node.id, [])))
        return max(len(_lines(node)) * LINE_HEIGHT + PADDING, ports * PORT_SPACING + PADDING)

    # Each column is preceded by room for the labels of the edges that end in it.
    gaps = [
        max(
            (
                _label_width(edge_label(edge))
                for node in nodes
                for edge in incoming.get(node.id, [])
            ),
            default=0.0,
        )
        + BEND_ROOM
        for nodes in by_column
    ]
    widths = [max((_node_width(n) for n in nodes), default=0.0) for nodes in by_column]
    heights = [
        sum(height(n) for n in nodes) + ROW_GAP * max(len(nodes) - 1, 0) for nodes in by_column
    ]
    tallest = max(heights, default=0.0)
    boxes: dict[str, Box] = {}
    x = MARGIN
    for index, nodes in enumerate(by_column):
        if index:
            x += gaps[index]
        y = MARGIN + (tallest - heights[index]) / 2  # centre each column vertically
        for node in nodes:
            box = Box(node, x, y, widths[index], height(node), _lines(node))
            boxes[node.id] = box
            y += box.height + ROW_GAP
        x += widths[index]
    links = _links(boxes, incoming, outgoing)
    return Drawing(x + MARGIN, MARGIN * 2 + tallest, list(boxes.values()), links)


def _links(
    boxes: dict[str, Box],
    incoming: dict[str, list[GraphEdge]],
    outgoing: dict[str, list[GraphEdge]],
) -> list[Link]:
    """Edges end at ports spread down the left side of their target, in the order of their
    sources, and start at ports down the right side of their source, in the order of their
    targets; each label sits just left of its port, so labels into one node never overlap."""

    def centre(node: str) -> float:
        return boxes[node].y + boxes[node].height / 2

    end: dict[tuple[str, str], float] = {}
    for node, edges in incoming.items():
        ordered = sorted(edges, key=lambda e: centre(e.source))
        for index, edge in enumerate(ordered):
            end[(edge.source, node)] = _port(boxes[node], index, len(ordered))
    start: dict[tuple[str, str], float] = {}
    for node, edges in outgoing.items():
        ordered = sorted(edges, key=lambda e: end[(node, e.target)])
        for index, edge in enumerate(ordered):
            start[(node, edge.target)] = _port(boxes[node], index, len(ordered))
    links: list[Link] = []
    for edges in incoming.values():
        for edge in edges:
            left, right = boxes[edge.source], boxes[edge.target]
            x0, y0 = left.x + left.width, start[(edge.source, edge.target)]
            x1, y1 = right.x, end[(edge.source, edge.target)]
            bend = max((x1 - x0) / 2, 30.0)
            path = (
                f"M{x0:.1f},{y0:.1f} C{x0 + bend:.1f},{y0:.1f} {x1 - bend:.1f},{y1:.1f} "
                f"{x1:.1f},{y1:.1f}"
            )
            label = edge_label(edge)
            width = _label_width(label)
            is_key = bool(edge.labels) and edge.labels[0].startswith("key ")
            links.append(Link(edge, path, label, x1 - LABEL_GAP - width / 2, y1 - 3, width, is_key))
    return links


def _port(box: Box, index: int, count: int) -> float:
    return box.y + PADDING / 2 + (box.height - PADDING) * (index + 0.5) / count


def _label_width(label: str) -> float:
    return len(label) * LABEL_CHAR_WIDTH + 8


def _lines(node: GraphNode) -> tuple[str, ...]:
    return tuple(
        part
        for line in node.lines
        for part in (textwrap.wrap(line, MAX_LINE_CHARS, break_on_hyphens=False) or [""])
    )


def _node_width(node: GraphNode) -> float:
    return max(len(line) for line in _lines(node)) * CHAR_WIDTH + 2 * PADDING
