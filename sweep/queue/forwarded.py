"""optuna's storage interface for a worker's storage, forwarded: what ``WriteBackStorage``
(``sweep.queue.writeback``) does not do itself goes to optuna's cached RDB storage unchanged."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from optuna.storages import BaseStorage, RDBStorage
from optuna.storages._cached_storage import _CachedStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.trial import FrozenTrial


class Forwarded(BaseStorage, BaseHeartbeat):
    """The studies, other trials and heartbeat settings of ``backend``, through optuna's
    cache (``_cache``) as optuna itself would read and write them."""

    backend: RDBStorage
    _cache: _CachedStorage

    def create_new_study(self, directions: Sequence[Any], study_name: str | None = None) -> int:
        return self._cache.create_new_study(directions, study_name)

    def delete_study(self, study_id: int) -> None:
        self._cache.delete_study(study_id)

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        self._cache.set_study_user_attr(study_id, key, value)

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        self._cache.set_study_system_attr(study_id, key, value)

    def get_study_id_from_name(self, study_name: str) -> int:
        return self._cache.get_study_id_from_name(study_name)

    def get_study_name_from_id(self, study_id: int) -> str:
        return self._cache.get_study_name_from_id(study_id)

    def get_study_directions(self, study_id: int) -> list[Any]:
        return self._cache.get_study_directions(study_id)

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return self._cache.get_study_user_attrs(study_id)

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self._cache.get_study_system_attrs(study_id)

    def get_all_studies(self) -> list[Any]:
        return self._cache.get_all_studies()

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        return self._cache.create_new_trial(study_id, template_trial)

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        return self._cache.get_trial_id_from_study_id_trial_number(study_id, trial_number)

    def get_best_trial(self, study_id: int) -> FrozenTrial:
        return self._cache.get_best_trial(study_id)

    def remove_session(self) -> None:
        self.backend.remove_session()

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        return self.backend._get_stale_trial_ids(study_id)

    def get_heartbeat_interval(self) -> int | None:
        return self.backend.get_heartbeat_interval()

    def get_heartbeat_stale_trial_callback(self) -> Any:
        return self.backend.get_heartbeat_stale_trial_callback()
