"""A training run's per-epoch results: the rows behind results.csv (utils.plots.plot_results
draws it) and a checkpoint's ``results`` / ``result_fields``."""
import math

from utils.general import atomic_write_text

RESULT_FIELDS = ['epoch', 'lr', 'box', 'obj', 'cls', 'P', 'R', 'mAP@0.5', 'mAP@0.5:0.95', 'val_box', 'val_obj',
                 'val_cls']


class ResultsLog:
    """``rows``: one {column: float} per epoch; ``fields``: the columns, RESULT_FIELDS and then
    the extra ones (loss terms', epoch hooks') in first-seen order. ``table`` [epochs, columns]
    restores a log from a checkpoint (its ``results`` as lists, ``fields`` its ``result_fields``)."""

    def __init__(self, fields=RESULT_FIELDS, table=()):
        self.fields = list(fields)
        self.rows = [dict(zip(self.fields, map(float, r))) for r in table]

    def __len__(self):
        return len(self.rows)

    def add_columns(self, names, source):
        """Append the new ones of ``names`` to the columns; RESULT_FIELDS' names are refused."""
        clash = [k for k in names if k in RESULT_FIELDS]
        if clash:
            raise ValueError(f'{source}: columns {clash} are the trainer\'s own')
        for k in names:
            if k not in self.fields:
                self.fields.append(k)

    def append(self, row):
        self.rows.append(row)

    def table(self):
        """[epochs, columns] in ``fields`` order; nan where a row has no value."""
        return [[r.get(k, math.nan) for k in self.fields] for r in self.rows]

    def write_csv(self, path):
        lines = [','.join(self.fields)] + [','.join(f'{v:.6g}' for v in row) for row in self.table()]
        atomic_write_text(path, '\n'.join(lines) + '\n')
