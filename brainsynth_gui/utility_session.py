"""The session's own sources for Tools ▸ Augmentation utility: its generated volumes and open scans; no Qt.

The experiment runs on files, exactly as ``brainsynth-cli utility`` does, so the app's figures
are those of a CLI run on the same files:

* the **synthetic set** is the session's generated volumes, written with their sidecars (the
  conditions they were generated with, the checkpoint and its SHA-256) by
  :func:`engine.export.export_batch` into ``OUT/session-volumes-<digest>/``, a folder named by
  the volumes' content, so running again on the same volumes reuses it (and the experiment's
  finished runs) while other volumes get a folder of their own;
* the **real set** is the open real scans as files, labelled by the ``participants.tsv`` beside
  them as training and View ▸ Show a real scan of the same group read it
  (:func:`brainsynth_gui.scan_labels.label_texts`);
* the **leakage check** gets the checkpoint files this session loaded that made the volumes,
  so their training split is compared with the held-out real subjects.

What the session lacks (no generated volumes, no labelled scans, volumes without the label) is
one :class:`engine.utility.errors.UtilityError` naming what to do in the app, before anything
is written.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.conditions import MISSING_VALUES
from engine.errors import CancelledError
from engine.specs import ModelSpec
from engine.utility.errors import UtilityError

#: Folder (in the experiment's output folder) the session's volumes are exported into, + a digest.
SESSION_FOLDER_PREFIX = "session-volumes-"
EXPORT_PREFIX = "synthetic"
_SHOWN = 5


def _listed(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown + (f" (and {len(names) - _SHOWN} more)" if len(names) > _SHOWN else "")


@dataclass(frozen=True)
class SessionVolume:
    """One generated volume of the session.

    Attributes:
        number: its number in the session (and in the exported file name).
        array: the model-space float32 array on ``spec``'s grid.
        provenance: how it was made (:meth:`engine.generation.GenerationRequest.provenance`).
        spec: the model spec it was generated with (its grid and intensity mapping).
    """

    number: int
    array: np.ndarray = field(repr=False)
    provenance: dict
    spec: ModelSpec

    @property
    def condition(self) -> dict:
        conditions = self.provenance.get("conditions")
        return conditions if isinstance(conditions, dict) else {}


@dataclass(frozen=True)
class UtilitySession:
    """What an app session offers the experiment.

    Attributes:
        volumes: the generated volumes, in the list's order.
        scans: the open real scans that can be compared (on the model grid, not view-only).
        checkpoints: ``sha256 → file`` of every checkpoint the session loaded.
    """

    volumes: tuple[SessionVolume, ...] = ()
    scans: tuple[Path, ...] = ()
    checkpoints: Mapping[str, Path] = field(default_factory=dict)

    # -- checks -------------------------------------------------------------------------------
    def check_volumes(self, label: str) -> None:
        """Refuse a session without generated volumes, or with volumes lacking the ``label`` condition.

        Raises:
            UtilityError: what is missing and what to do in the app.
        """
        if not self.volumes:
            raise UtilityError(
                "this session has no generated volumes: generate some with a conditional model (Generate), "
                "or choose a folder of exported volumes"
            )
        without = [
            f"#{v.number}"
            for v in self.volumes
            if v.condition.get(label) is None or str(v.condition[label]).strip().lower() in MISSING_VALUES
        ]
        if without:
            raise UtilityError(
                f"{len(without)} of {len(self.volumes)} generated volumes have no {label!r} condition "
                f"({_listed(without)}): generate them with a {label} chosen in the Generate panel (a conditional "
                "model), or remove them from the list"
            )

    def check_scans(self, label: str) -> None:
        """Refuse a session without open real scans, or with scans that have no ``label`` in a participants.tsv.

        Raises:
            UtilityError: what is missing and what to do in the app.
            BrainSynthError: a participants.tsv that cannot be read.
        """
        from brainsynth_gui.scan_labels import label_texts

        if not self.scans:
            raise UtilityError(
                "no real scans are open in this session: open prepared scans with a participants.tsv beside them "
                "(File ▸ Open scans…), or choose a folder"
            )
        labels = label_texts(self.scans, label)
        missing = [p.name for p in self.scans if labels[p] is None]
        if len(missing) == len(self.scans):
            raise UtilityError(
                f"none of the {len(self.scans)} real scans open in this session has a {label!r} label: put a "
                f"participants.tsv (participant_id and {label}) beside them, as for training"
            )
        if missing:
            raise UtilityError(
                f"{len(missing)} of {len(self.scans)} real scans open in this session have no {label!r} label: "
                f"{_listed(missing)}; add their rows to the participants.tsv beside them, or remove them from "
                "the session"
            )

    def checkpoint_files(self) -> list[Path]:
        """The loaded checkpoint files that made the session's volumes (for the leakage check)."""
        wanted = {v.provenance.get("checkpoint_sha256") for v in self.volumes}
        return [path for sha, path in self.checkpoints.items() if sha in wanted]

    # -- the synthetic set on disk ------------------------------------------------------------
    def digest(self) -> str:
        """SHA-256 of the volumes: numbers, provenance, specs and voxels (names the export folder)."""
        h = hashlib.sha256()
        for v in self.volumes:
            h.update(json.dumps([v.number, v.provenance, v.spec.to_dict()], sort_keys=True, default=str).encode())
            h.update(np.ascontiguousarray(v.array, dtype=np.float32).tobytes())
        return h.hexdigest()

    def export_volumes(self, out_dir: str | os.PathLike, *, cancel: Callable[[], bool] | None = None) -> Path:
        """Write the volumes with their sidecars into ``out_dir/session-volumes-<digest>/``; returns that folder.

        A folder that already holds every file is used as it is (the same volumes, exported by an
        earlier run). Volumes made with different specs (several checkpoints on one grid) are
        written by one :func:`engine.export.export_batch` per spec, each with its own sidecars.

        Args:
            out_dir: the experiment's output folder.
            cancel: asked after each volume; True stops the export (none of its files are kept).

        Raises:
            ExportError: the folder cannot be written.
            CancelledError: ``cancel`` answered True.
        """
        from engine.export import ExportVolume, export_batch, export_targets

        folder = Path(out_dir) / f"{SESSION_FOLDER_PREFIX}{self.digest()[:16]}"
        items = [(v.number, int(v.provenance["seed"])) for v in self.volumes]
        targets = export_targets(folder, prefix=EXPORT_PREFIX, items=items, overwrite=True)
        if all(nii.is_file() and js.is_file() for nii, js in targets):
            return folder

        def progress(_done: int, _total: int) -> None:
            if cancel is not None and cancel():
                raise CancelledError("cancelled while writing the session's volumes; nothing of them was kept")

        groups: dict[int, list[SessionVolume]] = {}
        for v in self.volumes:
            groups.setdefault(id(v.spec), []).append(v)
        target_of = {v.number: pair for v, pair in zip(self.volumes, targets, strict=True)}
        written: list[Path] = []
        try:
            for group in groups.values():
                export_batch(
                    [ExportVolume(number=v.number, array=v.array, provenance=v.provenance) for v in group],
                    spec=group[0].spec,
                    out_dir=folder,
                    prefix=EXPORT_PREFIX,
                    overwrite=True,  # a folder of this digest only ever holds these volumes
                    progress=progress,
                )
                written += [path for v in group for path in target_of[v.number]]
        except BaseException:
            # export_batch removes its own batch's files; the batches before it go too, so the
            # folder is complete or absent.
            for path in written:
                path.unlink(missing_ok=True)
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
            raise
        return folder


def iter_session_experiment(
    session: UtilitySession,
    real_sources: Sequence[str | os.PathLike],
    synthetic_sources: Sequence[str | os.PathLike],
    options,
    *,
    out_dir: str | os.PathLike,
    use_session_volumes: bool,
    checkpoints: Sequence[str | os.PathLike] = (),
    waive_leakage_check: bool = False,
    cancel: Callable[[], bool] | None = None,
) -> Generator:
    """:func:`engine.utility.experiment.iter_experiment`, the session's volumes exported first when asked.

    Args:
        session: the app's session.
        real_sources: the real scans (the session's files, or a folder or manifest).
        synthetic_sources: folders of exported volumes (ignored with ``use_session_volumes``).
        options: the :class:`engine.utility.experiment.UtilityOptions`.
        out_dir: the experiment's output folder.
        use_session_volumes: export the session's volumes and use them as the synthetic set,
            with the session's checkpoint files for the leakage check.
        checkpoints: further generator checkpoints (the dialog's field).
        waive_leakage_check: skip the leakage check (the report says so).
        cancel: asked between volumes and every few training steps.

    Yields:
        :class:`engine.utility.experiment.UtilityProgress` events ("exporting", then the experiment's).

    Returns:
        The :class:`engine.utility.experiment.UtilityResult`.
    """
    from engine.utility.experiment import UtilityProgress, iter_experiment

    checkpoints = list(checkpoints)
    if use_session_volumes:
        n = len(session.volumes)
        yield UtilityProgress("exporting", 0, n, f"writing the session's {n} volumes with their sidecars")
        folder = session.export_volumes(out_dir, cancel=cancel)
        yield UtilityProgress("exporting", n, n, f"{n} volumes in {folder.name}")
        synthetic_sources = [folder]
        checkpoints = [*session.checkpoint_files(), *checkpoints]
    return (
        yield from iter_experiment(
            real_sources,
            synthetic_sources,
            options,
            out_dir=out_dir,
            checkpoints=checkpoints,
            waive_leakage_check=waive_leakage_check,
            cancel=cancel,
        )
    )
