"""sweeps/ray_compat.py is the one module on Ray's private API: this fails loudly on a Ray upgrade."""
import ray

from sweeps import ray_compat


def test_ray_is_the_version_the_private_names_were_checked_against():
    assert ".".join(ray.__version__.split(".")[:2]) == ray_compat.RAY_CHECKED, (
        f"Ray {ray.__version__} is not the {ray_compat.RAY_CHECKED} that sweeps/ray_compat.py was checked "
        "against: re-read the private names it uses, run the sweeps' tests, then update RAY_CHECKED")


def test_the_private_names_still_exist():
    """Read in the sources: the session's thread attributes, ResultGrid's analysis, the storage logger."""
    import inspect

    from ray.train._internal import session
    from ray.tune import ResultGrid
    from ray.tune.trainable import function_trainable

    assert callable(session.get_session) and callable(function_trainable.wrap_function)
    source = inspect.getsource(session._TrainSession)
    assert "self.training_thread = " in source and "self.training_started = " in source
    assert "self._experiment_analysis = " in inspect.getsource(ResultGrid.__init__)
    __import__(ray_compat.STORAGE_LOGGER)  # the module whose logger is quieted


def test_joining_trainable_keeps_the_functions_tune_name():
    def bigbatch_trial(params):
        pass

    cls = ray_compat.joining_function_trainable(bigbatch_trial, 1.0)
    assert cls._name == "bigbatch_trial" and callable(cls.cleanup)
    assert ray_compat.trial_configs(object()) == {}  # no such attribute: the caller falls back
