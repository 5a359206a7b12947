#!/bin/sh
# The shell completions (generated at build time from the CLI's own grammar, doc/completion.lua)
# offer every command and flag the CLI documents: the commands of `cxone --help`, and for each
# command the flags of its usage lines (`cxone CMD --help`), of its man page synopsis, and the
# flags every command takes. bash: by running the completion function; zsh and fish: in the
# script's section for the command. `cxone sim` passes its flags to cxone-sim (see its --help).
# usage: completion_test.sh SRC_DIR BUILD_DIR (the Lua 5.4 tree)
set -u
SRC=$1
BUILD=$2
fail() { echo "FAIL: $*" >&2; failed=1; }
failed=0
C=$BUILD/completion
for s in bash zsh fish; do [ -s "$C/$s/cxone" ] || { echo "FAIL: no $C/$s/cxone" >&2; exit 1; }; done
cxone() { NO_COLOR=1 lua5.4 "$SRC/bin/cxone" "$@"; }

usage=$(cxone --help) || { echo "FAIL: cxone --help" >&2; exit 1; }
commands=$(echo "$usage" | sed -n '/^commands:/,/^$/p' | sed -n 's/^  \([a-z][a-z-]*\).*/\1/p' | sort -u)
[ -n "$commands" ] || { echo "FAIL: no commands found in cxone --help" >&2; exit 1; }
# the man page's synopsis names the same commands
man_commands=$(sed -n '/^\.SH SYNOPSIS/,/^\.SH /p' "$SRC/doc/cxone.1" | sed -n 's/^\.B cxone \([a-z][a-z-]*\).*/\1/p' | sort -u)
[ "$commands" = "$man_commands" ] || fail "commands of cxone --help [$(echo $commands)] differ from the man page's synopsis [$(echo $man_commands)]"
# flags every command takes: the "options (every command):" line
global=$(echo "$usage" | grep '^options (every command)' | grep -oE -- '--[a-z][a-z-]*' | sort -u)
[ -n "$global" ] || fail "no 'options (every command):' line in cxone --help"

flags_of() { # the documented flags of command $1
    {
        echo "$global"
        cxone "$1" --help | sed -n '/^usage:/p; /^       cxone/p' | grep -oE -- '--[a-z][a-z-]*'
        sed -n '/^\.SH SYNOPSIS/,/^\.SH /p' "$SRC/doc/cxone.1" \
            | awk -v c="$1" '/^\.B cxone / { on = ($3 == c) } /^\.br/ { on = 0 } on' \
            | grep -oE -- '\\-\\-[a-z][a-z-]*' | sed 's/\\//g'
    } | sort -u
}

# bash: what the completion function offers for the words given
bash_complete() {
    bash -c '. "$1" || exit 1; shift
COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}
fn=$(complete -p cxone | sed -E "s/.* -F ([^ ]+) .*/\1/") || exit 1
"$fn" cxone "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"; printf "%s\n" "${COMPREPLY[@]}"' \
        sh "$C/bash/cxone" "$@"
}
# zsh: the lines of the script's case branch for a command; fish: its lines for the command
zsh_section() { awk -v c="    $1)" '$0 == c { on = 1; next } on && /^ *;;/ { exit } on' "$C/zsh/cxone"; }

offered=$(bash_complete cxone "") || fail "bash: the completion script does not load"
n_cmd=0
n_flag=0
for cmd in $commands; do
    n_cmd=$((n_cmd + 1))
    echo "$offered" | grep -qx "$cmd" || fail "bash: 'cxone <TAB>' does not offer $cmd"
    grep -qE "^ *['\"]?$cmd[:'\"]" "$C/zsh/cxone" || fail "zsh: no command $cmd"
    grep -qE "__fish_cxone_using_command' -xa '$cmd'" "$C/fish/cxone" || fail "fish: no command $cmd"
    [ "$cmd" = sim ] && continue
    bflags=$(bash_complete cxone "$cmd" --)
    zs=$(zsh_section "$cmd")
    for f in $(flags_of "$cmd"); do
        n_flag=$((n_flag + 1))
        echo "$bflags" | grep -qx -- "$f" || fail "bash: 'cxone $cmd --<TAB>' does not offer $f"
        echo "$zs" | grep -q -- "$f" || fail "zsh: no $f for $cmd"
        grep -E "__fish_cxone_seen_command $cmd'" "$C/fish/cxone" | grep -qE -- "-l ${f#--}( |\$)" \
            || fail "fish: no $f for $cmd"
    done
done
# and every flag cxone --help mentions is offered by some command
for f in $(echo "$usage" | grep -oE -- '--[a-z][a-z-]*' | sort -u); do
    grep -q -- "$f" "$C/bash/cxone" || fail "bash: $f (cxone --help) is offered by no command"
done
[ "$n_cmd" -ge 8 ] || fail "only $n_cmd commands found"
[ "$failed" -eq 0 ] || exit 1
echo "ok: bash, zsh and fish complete all $n_cmd commands and $n_flag command/flag pairs"
