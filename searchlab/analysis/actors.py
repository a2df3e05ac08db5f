"""CKA comparisons in Ray actors while the sweep runs: a Tune callback hands them out.

As each trial completes, the callback looks at the experiment on storage for comparisons that have
become possible (all references of a group finished) and are not yet on disk, and submits them to
a small pool of actors with their own resource requests, so CKA work shares the cluster with
training. At the end of the sweep it waits for them and writes the report. Because the comparisons
to do are read off the disk each time, a resumed sweep neither repeats finished ones nor forgets
those an interruption cut short.

Analysis actors must find room on a full cluster. Tune hands a finished trial's actor, with its
resources, straight to the next pending trial when actors are reused, so an analysis actor requested
then waited for the whole sweep (12 CKA runs on 2 CPUs: references done at minute 7, no comparison
before minute 41). Sweeps with CKA therefore run without actor reuse (sweep.run): a finished trial
gives its resources back to Ray, which places the waiting analysis actor on them. And an analysis
actor with nothing to do is removed, giving its own slot back to the trials.
"""
import logging

import ray
from ray import tune

from searchlab.analysis import study

logger = logging.getLogger(__name__)


@ray.remote
class CKAWorker:
    def compare(self, experiment_dir, group, a, b, dir_a, dir_b):
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        return study.compare(experiment_dir, group, a, b, dir_a, dir_b, device)


class CKACallback(tune.Callback):
    def __init__(self, experiment_dir, resources=None, actors=1):
        self.experiment_dir = str(experiment_dir)
        self.resources = {"cpu": 1, "gpu": 0, **(resources or {})}
        self.actors = actors
        self._workers = []
        self._running = {}  # (group, a, b) -> object ref

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._submit()

    def on_step_end(self, iteration, trials, **info):
        if self._running:
            self._collect(ray.wait(list(self._running.values()), num_returns=len(self._running), timeout=0)[0])
        if not self._running:
            self._remove_workers()  # idle: their slots go back to the trials

    def on_experiment_end(self, trials, **info):
        self._submit()
        while self._running:
            self._collect(ray.wait(list(self._running.values()), num_returns=1)[0])
        self._remove_workers()
        written = study.report(self.experiment_dir)
        if written:
            logger.info("CKA report written to %s/%s", self.experiment_dir, study.CKA_DIR)

    def _submit(self):
        for group, a, b, dir_a, dir_b in study.pending(self.experiment_dir):
            if (group, a, b) in self._running:
                continue
            if len(self._workers) < self.actors:
                self._workers.append(CKAWorker.options(num_cpus=self.resources["cpu"],
                                                       num_gpus=self.resources["gpu"]).remote())
            worker = self._workers[len(self._running) % len(self._workers)]
            self._running[(group, a, b)] = worker.compare.remote(self.experiment_dir, group, a, b, dir_a, dir_b)

    def _remove_workers(self):
        for worker in self._workers:
            ray.kill(worker)
        self._workers = []

    def _collect(self, done):
        for key, ref in list(self._running.items()):
            if ref in done:
                del self._running[key]
                try:
                    ray.get(ref)
                except Exception as e:  # one failed comparison must not stop the sweep
                    logger.error("CKA comparison %s failed: %s", key, e)
