"""Imported only by the multiprocess executor's forkserver (`PARALLEL_SYNCS` in
activation/components/hightouch_syncs.py lists it in `preload_modules`).

Building the definitions at import is this module's whole purpose: the forkserver imports it
once per run, before forking any step process, so each step reuses definitions built once
(`activation.definitions.prebuild`) instead of building its own. A failure here is swallowed
there, and each step builds as before. Nothing else imports this module.
"""

from activation.definitions import prebuild

prebuild()
