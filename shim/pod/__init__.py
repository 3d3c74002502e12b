"""The pod layer: what a pod is and does, below the Task and Sandbox API doors.

Growing seam by seam (issue 19): `container` holds a container's processes and prepares
the spec and volumes it gives the guest. Errors here are domain errors; the services
turn them into ttrpc codes.
"""
