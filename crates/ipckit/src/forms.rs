//! The four forms of every blocking operation, written once.
//!
//! Each type that sends or receives implements one private `*_inner(…,
//! Deadline)` method; these macros generate the public `op`, `try_op`,
//! `op_timeout` and `op_deadline` forms around it, each with its own error
//! type (a failed send hands the message back).

/// Generates `send`, `try_send`, `send_timeout` and `send_deadline` around
/// `self.send_inner(&Message, Deadline) -> Result<(), Fault>`.
macro_rules! send_forms {
    () => {
        /// Sends a message, blocking for as long as it takes.
        ///
        /// # Errors
        ///
        /// [`SendError::Disconnected`](crate::SendError::Disconnected) when the
        /// peer is gone, [`SendError::TooLarge`](crate::SendError::TooLarge)
        /// over the maximum size, [`SendError::Io`](crate::SendError::Io);
        /// the message is handed back.
        pub fn send(&mut self, msg: impl Into<Message>) -> Result<(), crate::SendError<Message>> {
            let msg = msg.into();
            self.send_inner(&msg, Deadline::Never).map_err(|f| crate::SendError::from_fault(f, msg))
        }

        /// Sends a message only if that needs no waiting.
        ///
        /// # Errors
        ///
        /// [`TrySendError::Full`](crate::TrySendError::Full) when it would
        /// block, otherwise as `send`; the message is handed back.
        pub fn try_send(&mut self, msg: impl Into<Message>) -> Result<(), crate::TrySendError<Message>> {
            let msg = msg.into();
            self.send_inner(&msg, Deadline::Now).map_err(|f| crate::TrySendError::from_fault(f, msg))
        }

        /// Sends a message, waiting at most `timeout`.
        ///
        /// # Errors
        ///
        /// [`SendTimeoutError::Timeout`](crate::SendTimeoutError::Timeout)
        /// when the time runs out (nothing was sent), otherwise as `send`.
        pub fn send_timeout(
            &mut self,
            msg: impl Into<Message>,
            timeout: std::time::Duration,
        ) -> Result<(), crate::SendTimeoutError<Message>> {
            self.send_deadline_inner(msg.into(), Deadline::after(timeout))
        }

        /// Sends a message, waiting until `deadline` at the latest.
        ///
        /// # Errors
        ///
        /// As `send_timeout`.
        pub fn send_deadline(
            &mut self,
            msg: impl Into<Message>,
            deadline: std::time::Instant,
        ) -> Result<(), crate::SendTimeoutError<Message>> {
            self.send_deadline_inner(msg.into(), Deadline::At(deadline))
        }

        fn send_deadline_inner(
            &mut self,
            msg: Message,
            deadline: Deadline,
        ) -> Result<(), crate::SendTimeoutError<Message>> {
            self.send_inner(&msg, deadline).map_err(|f| crate::SendTimeoutError::from_fault(f, msg))
        }
    };
}

/// Generates `recv`, `try_recv`, `recv_timeout` and `recv_deadline` around
/// `self.recv_inner(Deadline) -> Result<$item, Fault>`.
macro_rules! recv_forms {
    ($item:ty) => {
        /// Receives the next one, blocking until it arrives.
        ///
        /// # Errors
        ///
        /// [`RecvError::Disconnected`](crate::RecvError::Disconnected) once
        /// every peer is gone and nothing is left (a listening end never
        /// disconnects), [`RecvError::Frame`](crate::RecvError::Frame) when
        /// the only peer sent something that is not a valid frame,
        /// [`RecvError::Io`](crate::RecvError::Io).
        pub fn recv(&mut self) -> Result<$item, crate::RecvError> {
            self.recv_inner(Deadline::Never).map_err(crate::RecvError::from_fault)
        }

        /// Receives the next one if it is ready now.
        ///
        /// # Errors
        ///
        /// [`TryRecvError::Empty`](crate::TryRecvError::Empty) when nothing
        /// is ready, otherwise as `recv`.
        pub fn try_recv(&mut self) -> Result<$item, crate::TryRecvError> {
            self.recv_inner(Deadline::Now).map_err(crate::TryRecvError::from_fault)
        }

        /// Receives the next one, waiting at most `timeout`.
        ///
        /// # Errors
        ///
        /// [`RecvTimeoutError::Timeout`](crate::RecvTimeoutError::Timeout)
        /// when the time runs out, otherwise as `recv`.
        pub fn recv_timeout(
            &mut self,
            timeout: std::time::Duration,
        ) -> Result<$item, crate::RecvTimeoutError> {
            self.recv_inner(Deadline::after(timeout)).map_err(crate::RecvTimeoutError::from_fault)
        }

        /// Receives the next one, waiting until `deadline` at the latest.
        ///
        /// # Errors
        ///
        /// As `recv_timeout`.
        pub fn recv_deadline(
            &mut self,
            deadline: std::time::Instant,
        ) -> Result<$item, crate::RecvTimeoutError> {
            self.recv_inner(Deadline::At(deadline)).map_err(crate::RecvTimeoutError::from_fault)
        }
    };
}
