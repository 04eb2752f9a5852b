"""The coach console: a server-rendered web app for coaches, supervisors and admins.

`vigil console` serves it (services/cli_console.py); docs/console.md describes what it does. The
statistics behind its charts are pure modules (glucose_stats, trends) with hand-computed tests;
the SVG charts are rendered on the server (charts); live updates come from one LISTEN on
`vigil_alerts` per process, fanned out to the browsers over Server-Sent Events (live).
"""
