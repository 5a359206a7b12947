#!/bin/sh
# Posts `cxone plan --format markdown PLAYBOOK` to a CI job summary (GitHub Actions:
# $GITHUB_STEP_SUMMARY; any file otherwise) so reviewers see the promotion in the pull request.
# usage: plan-summary.sh PLAYBOOK.lua [SUMMARY_FILE]
#   SUMMARY_FILE defaults to $GITHUB_STEP_SUMMARY, else standard output.
#   $CXONE is the command to run (default: cxone on PATH); the CXONE_* settings come from the
#   environment (CI secrets), as for any cxone command.
# Exit status: 0 when the plan was made (changes pending or not), else cxone's status (1).
# With $GITHUB_OUTPUT set, also writes `changes=true|false` for later steps (e.g. to ask for an
# approval before `cxone apply`).
set -u
playbook=${1:?usage: plan-summary.sh PLAYBOOK.lua [SUMMARY_FILE]}
summary=${2:-${GITHUB_STEP_SUMMARY:-/dev/stdout}}
cxone=${CXONE:-cxone}

out=$(mktemp "${TMPDIR:-/tmp}/cxone-plan.XXXXXX") || exit 1
trap 'rm -f "$out"' EXIT
# shellcheck disable=SC2086  # $CXONE may be a command with arguments ("lua5.4 bin/cxone")
$cxone plan --format markdown "$playbook" >"$out"
rc=$?
case $rc in
    0) changes=false ;;
    2) changes=true ;;
    *) echo "plan-summary: cxone plan failed (exit $rc); see the messages above" >&2
       { echo "### cxone plan failed"; echo; echo "\`cxone plan\` exited with status $rc; see the job log."; } >>"$summary"
       exit "$rc" ;;
esac
cat "$out" >>"$summary" || exit 1
if [ -n "${GITHUB_OUTPUT:-}" ]; then
    echo "changes=$changes" >>"$GITHUB_OUTPUT" || exit 1
fi
exit 0
