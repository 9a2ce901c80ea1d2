#!/bin/sh
# Add BrainSynth to the desktop's application menu for the current user (no root needed).
#   dist/brainsynth/install-desktop-entry.sh          (run from anywhere; uses its own folder)
# Writes ~/.local/share/applications/brainsynth.desktop with the bundle's absolute paths and
# copies the icon to ~/.local/share/icons/hicolor/256x256/apps/brainsynth.png.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
apps=${XDG_DATA_HOME:-$HOME/.local/share}/applications
icons=${XDG_DATA_HOME:-$HOME/.local/share}/icons/hicolor/256x256/apps
mkdir -p "$apps" "$icons"
cp "$here/_internal/resources/icons/brainsynth.png" "$icons/brainsynth.png"
sed -e "s|^Exec=.*|Exec=\"$here/brainsynth\"|" -e "s|^TryExec=.*|TryExec=$here/brainsynth|" \
    "$here/brainsynth.desktop" > "$apps/brainsynth.desktop"
command -v update-desktop-database >/dev/null 2>&1 && update-desktop-database "$apps" || true
echo "installed $apps/brainsynth.desktop"
