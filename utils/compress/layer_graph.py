"""The layer graph of a parsed cfg: who produces and who consumes every layer's channels.

    graph = LayerGraph(model.module_defs)             # or the parsed sections, [net] first
    graph.out_channels[i]                             # channels of layer i's output
    graph.sources[i]                                  # layers whose outputs layer i reads (-1 = the image)
    graph.consumers[i]                                # layers that read layer i's output
    graph.input_layout(i)                             # [(producer, start, stop), ...]: layer i's input channels
    graph.channel_group[i]                            # [C_i] coupling-group id of every output channel
    graph.prune_set(mode)                             # BN convs that sparsity mode 0/1/2 penalises (§5.2)
    graph.residual_blocks()                           # removable [shortcut] blocks for layer pruning

Channels that must be kept or removed together (the two inputs of a residual add, a
depthwise conv and its input, a route that only forwards) share one *coupling group*
(union-find over channel ids). A group's *owners* are the BN layers whose scale gates it;
a group is *fixed* (never pruned) when something reads it in a way that removal cannot
preserve: a grouped route (it splits at a channel offset), a [scale_channels] / [se]
multiplication, a weighted shortcut, a conv without BN, a grouped (non-depthwise) conv,
the image.
"""
import numpy as np

from utils.parse_config import section_out_channels

__all__ = ['LayerGraph', 'IMAGE', 'is_depthwise']

IMAGE = -1  # the network input, as a producer index


def is_depthwise(d, in_channels):
    """A [depthwise] section, or a [convolutional] with groups = input channels = filters."""
    if d['type'] == 'depthwise':
        return True
    return d['type'] == 'convolutional' and d['groups'] > 1 and d['groups'] == in_channels == d['filters']


class _UnionFind:
    def __init__(self):
        self.parent = []

    def new(self, n):
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return np.arange(start, start + n)

    def find(self, a):
        root = a
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[a] != root:  # path compression
            self.parent[a], a = root, self.parent[a]
        return root

    def union(self, a, b):
        ra, rb = self.find(int(a)), self.find(int(b))
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


class LayerGraph:
    """Producers, consumers and channel coupling of the sections of a parsed cfg."""

    def __init__(self, module_defs, in_channels=None):
        if module_defs and module_defs[0]['type'] == 'net':
            in_channels = module_defs[0].get('channels', 3) if in_channels is None else in_channels
            module_defs = module_defs[1:]
        self.defs = list(module_defs)
        self.in_channels = 3 if in_channels is None else in_channels
        n = len(self.defs)
        self.out_channels, self.sources = [], []
        for i, d in enumerate(self.defs):
            self.out_channels.append(section_out_channels(d, i, self.out_channels, self.in_channels))
            self.sources.append(self._sources(i))
        self.consumers = [[] for _ in range(n)]
        for i, srcs in enumerate(self.sources):
            for j in srcs:
                if j != IMAGE and i not in self.consumers[j]:
                    self.consumers[j].append(i)
        self._couple_channels()

    # ------------------------------------------------------------------ structure
    def _resolve(self, ref, i):
        return i + ref if ref < 0 else ref

    def _sources(self, i):
        d, prev = self.defs[i], i - 1 if i > 0 else IMAGE
        if d['type'] == 'route':
            return [self._resolve(j, i) for j in d['layers']]
        if d['type'] == 'shortcut':
            return [prev] + [self._resolve(j, i) for j in d['from']]
        if d['type'] == 'scale_channels':
            return [prev, self._resolve(d['from'][0], i)]
        return [prev]

    def channels_of(self, j):
        return self.in_channels if j == IMAGE else self.out_channels[j]

    def input_channels(self, i):
        """Channels of the tensor layer i computes on (its previous output, or its route)."""
        return sum(stop - start for _, start, stop in self.input_layout(i))

    def input_layout(self, i):
        """Layer i's input as [(producer, start, stop)] channel ranges, concatenated in order.
        For a [shortcut] / [scale_channels] it is the previous layer's output (the tensor the
        others are added to / multiplied by)."""
        d = self.defs[i]
        if d['type'] == 'route':
            parts = []
            for j in self.sources[i]:
                size = self.channels_of(j) // d['groups']
                parts.append((j, d['group_id'] * size, (d['group_id'] + 1) * size))
            return parts
        j = self.sources[i][0]
        return [(j, 0, self.channels_of(j))]

    def is_depthwise(self, i):
        return is_depthwise(self.defs[i], self.input_channels(i))

    def is_conv(self, i):
        return self.defs[i]['type'] in ('convolutional', 'depthwise')

    def has_bn(self, i):
        return self.is_conv(i) and bool(self.defs[i]['batch_normalize'])

    # ------------------------------------------------------------------ channel coupling
    def _couple_channels(self):
        uf, fixed, ids = _UnionFind(), {}, []
        image_ids = uf.new(self.in_channels)

        def ids_of(j):
            return image_ids if j == IMAGE else ids[j]

        def input_ids(i):
            return np.concatenate([ids_of(j)[a:b] for j, a, b in self.input_layout(i)])

        def fix(channel_ids, reason):
            for c in channel_ids:
                fixed.setdefault(int(c), reason)

        fix(image_ids, 'the image')
        for i, d in enumerate(self.defs):
            kind = d['type']
            if kind in ('convolutional', 'depthwise'):
                x = input_ids(i)
                if self.is_depthwise(i):
                    out = x  # channel c of a depthwise conv reads only input channel c
                else:
                    out = uf.new(d['filters'])
                    if d['groups'] > 1:
                        fix(x, f'read by the grouped conv {i}')
                        fix(out, f'made by the grouped conv {i}')
                if not d['batch_normalize']:
                    fix(out, f'made by conv {i}, which has no BatchNorm')
            elif kind == 'route':
                out = input_ids(i)
                if d['groups'] > 1:
                    for j in self.sources[i]:
                        fix(ids_of(j), f'split by the grouped route {i}')
            elif kind == 'shortcut':
                out = ids[i - 1]
                for j in self.sources[i][1:]:
                    other = ids_of(j)
                    m = min(len(out), len(other))
                    for a, b in zip(out[:m], other[:m]):
                        uf.union(a, b)
                    if len(other) != len(out) or d['weights_type'] != 'none':
                        fix(out, f'added with weights or unequal widths by shortcut {i}')
                        fix(other, f'added with weights or unequal widths by shortcut {i}')
            elif kind in ('scale_channels', 'se'):
                x = input_ids(i)
                fix(x, f'multiplied by [{kind}] {i}')
                out = x
                if kind == 'scale_channels':
                    out = ids_of(self.sources[i][1])
                    fix(out, f'multiplied by [{kind}] {i}')
            elif kind == 'yolo':
                out = ids[i - 1]
                fix(out, f'read by the [yolo] head {i}')
            else:  # maxpool, upsample, avgpool, dropout: channel c of the output is channel c of the input
                out = input_ids(i)
            ids.append(out)
        # resolve every channel id to its group's root
        self.channel_group = [np.array([uf.find(int(c)) for c in layer_ids], dtype=np.int64) for layer_ids in ids]
        self.fixed_groups = {}
        for c, reason in fixed.items():
            self.fixed_groups.setdefault(uf.find(c), reason)
        self.group_owners = {}
        for i in range(len(self.defs)):
            if self.has_bn(i):
                for c, g in enumerate(self.channel_group[i]):
                    self.group_owners.setdefault(int(g), []).append((i, c))

    def input_groups(self, i):
        """Group id of every input channel of layer i (see :meth:`input_layout`)."""
        return np.concatenate([self._groups_of(j)[a:b] for j, a, b in self.input_layout(i)])

    def _groups_of(self, j):
        if j == IMAGE:
            return np.full(self.in_channels, -1, dtype=np.int64)
        return self.channel_group[j]

    def owner_layers(self, group):
        """BN layers whose scales gate ``group`` (sorted, unique)."""
        return sorted({i for i, _ in self.group_owners.get(group, ())})

    def prunable_groups(self, layers):
        """Groups that may be removed when only ``layers`` are pruning candidates: not fixed, and
        every BN layer that gates them is a candidate."""
        layers = set(layers)
        out = set()
        for g, owners in self.group_owners.items():
            if g not in self.fixed_groups and all(i in layers for i, _ in owners):
                out.add(g)
        return out

    # ------------------------------------------------------------------ sparsity / pruning sets
    def prune_set(self, mode):
        """BN convs whose scales sparsity mode ``mode`` penalises and its pruners may cut
        (upstream §5.2): 0 = normal/regular (nothing on a residual add), 1 = shortcut/slim/
        layer-channel (residual adds included), 2 = layer (the conv that closes each residual
        block). Always excluded: convs feeding an [upsample], an SPP (maxpool -> route), a
        grouped route or a depthwise conv, and depthwise convs themselves."""
        if mode not in (0, 1, 2):
            raise ValueError(f'--prune must be 0, 1 or 2, got {mode}')
        defs, n = self.defs, len(self.defs)
        shortcuts = [i for i, d in enumerate(defs) if d['type'] == 'shortcut']
        cbl = [i for i in range(n) if self.has_bn(i) and not self.is_depthwise(i)]
        if mode == 2:
            return [s - 1 for s in shortcuts if s - 1 in cbl]
        excluded = set()
        for i in cbl:
            nxt = defs[i + 1] if i + 1 < n else None
            if nxt is None:
                continue
            if nxt['type'] == 'upsample':
                excluded.add(i)
            elif nxt['type'] == 'maxpool' and i + 2 < n and defs[i + 2]['type'] == 'route':
                excluded.add(i)  # SPP (tiny's maxpool -> conv chain is not)
            elif nxt['type'] == 'route' and nxt['groups'] > 1:
                excluded.add(i)
            elif self.is_conv(i + 1) and self.is_depthwise(i + 1):
                excluded.add(i)
        if mode == 0:
            for s in shortcuts:
                excluded.add(s - 1)
                for f in self.sources[s][1:]:
                    excluded.add(f - 1 if defs[f]['type'] == 'shortcut' else f)
        return [i for i in cbl if i not in excluded]

    def residual_blocks(self):
        """Removable residual blocks as (shortcut index, source index): a [shortcut] with one
        ``from`` source j whose branch j+1 .. s-1 is a chain that starts from j, is read by
        nothing else, and ends in a BN conv; linear, unweighted add of equal widths.
        Removing the block leaves x_j where x_j + branch(x_j) was."""
        blocks = []
        for s, d in enumerate(self.defs):
            if d['type'] != 'shortcut' or len(self.sources[s]) != 2 or d['weights_type'] != 'none':
                continue
            if d['activation'] != 'linear':
                continue
            j = self.sources[s][1]
            if j < 0 or j >= s - 1 or not self.has_bn(s - 1) or self.out_channels[j] != self.out_channels[s]:
                continue
            branch = range(j + 1, s)
            if self.sources[j + 1] != [j] or any(not j <= src < s for b in branch for src in self.sources[b]):
                continue
            inside = set(branch) | {s}
            if any(c not in inside for b in branch for c in self.consumers[b]):
                continue
            blocks.append((s, j))
        return blocks
