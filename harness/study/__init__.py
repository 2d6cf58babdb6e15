"""A study, one module per concern, each importing only the ones listed before it:

- ``progress``: what a study prints (used by all, uses none);
- ``budget``: a parameter-matched study's band, and each adapter's sizes inside it (meta-device counts);
- ``plan``: profile -> validated ``Plan``, every check made before Ray starts;
- ``sampler``: Sobol-then-TPE and each method's Optuna space;
- ``outcomes``: a trial's outcome as leaderboard rows, status and reason;
- ``tune``: the trial driver, its deadline, the recording callback, the study's Tuner;
- ``phases``: reference, search and final, run by that one Tuner.

``python harness/search.py`` is the command-line front end.
"""
