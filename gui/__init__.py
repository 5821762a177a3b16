"""hagview viewer (PyQt6).

app.py       `hagview` command line (= gui.app:main)
window.py    the main window: controls with keyboard shortcuts, status line, scripted runs
video.py     the video area: newest frame painted at once, overlay drawn as vectors
tracks.py    the track panel: every polyp seen, its size, class and a sparkline
bridge.py    pipeline threads <-> GUI thread: latest-value slots, a control thread, statistics
recorder.py  crash-safe MP4 recording (raw or annotated)
snapshot.py  PNG snapshots with and without the overlay, plus the tracks as JSON
"""
